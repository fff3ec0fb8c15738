"""Every file a training run writes follows the umask and is written atomically; temporary files of a
killed writer are removed by the next write (issue 16, items 9 and 10)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from ssmkit.training.config import TrainConfig
from ssmkit.training.corpora import DUMPED, dna_corpus
from ssmkit.training.run import run
from tests.cli.cli_process import tiny_corpus


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _files(*roots) -> list[str]:
    return [os.path.join(d, f) for root in roots for d, _, names in os.walk(root) for f in names]


def test_a_run_writes_every_file_with_the_umask_and_clears_stale_temporaries(tmp_path, umask_027):
    pytest.importorskip("tokenizers")
    out, pid = tmp_path / "run", _dead_pid()
    (out / "model").mkdir(parents=True)
    stale = [out / f".train_config.json.tmp-{pid}", out / "model" / f".tokenizer_config.json.tmp-{pid}"]
    for p in stale:
        p.write_text("half a file")
    model = {"layers": "attention", "d_model": 32, "n_layer": 1, "n_head": 2}
    cfg = TrainConfig(
        model=model,
        corpus=tiny_corpus(tmp_path / "corpus"),
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(out),
        max_steps=3,
        seq_len=32,
        batch_size=4,
        eval_windows=2,
        val_fraction=0.3,
        device="cpu",
        tokenizer="bpe",
        bpe_vocab_size=280,
    )
    run(cfg)
    assert not any(p.exists() for p in stale)
    written = _files(out, tmp_path / "cache")
    names = {os.path.basename(f) for f in written}
    assert {
        "checkpoint.pt",
        "metrics.jsonl",
        "train_config.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "train.bin",
        "val.bin",
    } <= names
    for f in written:
        assert stat.S_IMODE(os.stat(f).st_mode) == umask_027, f
        assert ".tmp-" not in f


def test_a_dumped_corpus_cut_short_is_dumped_again(tmp_path, umask_027):
    fasta = tmp_path / "genome.fa"
    fasta.write_text(">chr\n" + "\n".join("ACGTTGCA" for _ in range(3000)) + "\n")
    cache = tmp_path / "cache"
    first = dna_corpus(str(cache), path=str(fasta), val_fraction=0.3)
    dump = cache / "dna-genome"
    assert (dump / DUMPED).exists()
    parts = sorted(os.listdir(dump))
    (dump / DUMPED).unlink()  # a kill before the dump finished: the marker was never written
    (dump / parts[-1]).write_text("")
    again = dna_corpus(str(cache), path=str(fasta), val_fraction=0.3)
    assert again.fingerprint == first.fingerprint and (dump / DUMPED).exists()
    for f in _files(dump):
        assert stat.S_IMODE(os.stat(f).st_mode) == umask_027, f
