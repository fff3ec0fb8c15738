"""Tokenizers, corpora split by file, memory-mapped token arrays and the batches read from them."""

from __future__ import annotations

import builtins
import os
import sys

import numpy as np
import pytest
import torch

from ssmkit.training import corpora
from ssmkit.training.corpora import files_corpus, stdlib_corpus
from ssmkit.training.data import LMBatches, TokenArray, eval_windows, unigram_bits_per_token, write_tokens
from ssmkit.training.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

TEXT = "def f(x):\n    return x  # ünïcode ✓ 漢字\n"


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == TEXT
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


def test_stdlib_corpus_found_and_split_by_file():
    c = stdlib_corpus()
    assert len(c.train_files) > 100 and len(c.val_files) > 5
    assert not set(c.train_files) & set(c.val_files)
    allf = c.train_files + c.val_files
    assert all(f.endswith(".py") for f in allf)
    parts = [set(os.path.normpath(f).split(os.sep)) for f in allf]
    assert not any(p & {"test", "tests", "site-packages"} for p in parts)
    assert any(f.endswith(os.sep + "os.py") for f in allf)
    assert c.n_bytes["train"] > 1_000_000 and len(c.fingerprint) == 16
    assert stdlib_corpus().val_files == c.val_files  # deterministic


def _make_files(tmp_path, n=8):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for i in range(n):
        (d / ("sub" if i % 2 else "") / f"f{i}.txt").write_text(f"file {i}: " + "abc " * (20 + i))
    return d


def test_files_corpus_dirs_and_globs(tmp_path):
    d = _make_files(tmp_path)
    a = files_corpus(str(d), val_fraction=0.3)
    b = files_corpus(str(d / "**" / "*.txt"), val_fraction=0.3)
    assert sorted(a.train_files + a.val_files) == sorted(b.train_files + b.val_files)
    assert len(a.train_files + a.val_files) == 8 and a.val_files and a.fingerprint == b.fingerprint
    with pytest.raises(FileNotFoundError, match="matches no file"):
        files_corpus(str(tmp_path / "nothing*.txt"))


def test_memmap_tokens_and_windows(tmp_path):
    d = _make_files(tmp_path)
    c = files_corpus(str(d), val_fraction=0.3)
    path = str(tmp_path / "train.bin")
    meta = write_tokens(c.train_files, ByteTokenizer(), path, fingerprint=c.fingerprint)
    raw = b"".join(open(f, "rb").read() for f in c.train_files)
    arr = TokenArray.open(path)
    assert isinstance(arr.tokens, np.memmap) and arr.tokens.dtype == np.uint8
    assert meta["n_tokens"] == len(raw) == len(arr) and arr.bytes_per_token == 1.0
    np.testing.assert_array_equal(np.asarray(arr.tokens), np.frombuffer(raw, np.uint8))
    batches = LMBatches(arr, 10, 4, seed=1)
    b = batches.get(2, 0)
    offsets = batches.global_offsets(2, 0)
    for row, o in zip(b["input_ids"], offsets):
        assert bytes(row.tolist()) == raw[o : o + 10]
    assert torch.equal(b["input_ids"], batches.get(2, 0)["input_ids"])  # a pure function of the step
    assert not torch.equal(b["input_ids"], batches.get(3, 0)["input_ids"])
    w = eval_windows(arr, 10, 5)
    assert w.shape == (5, 10) and bytes(w[0].tolist()) == raw[:10]
    # reused when the fingerprint matches (no rewrite)
    mtime = os.path.getmtime(path)
    write_tokens(c.train_files, ByteTokenizer(), path, fingerprint=c.fingerprint)
    assert os.path.getmtime(path) == mtime


def test_unigram_baseline():
    uniform = TokenArray.from_ids(np.tile(np.arange(256, dtype=np.uint8), 50))
    assert unigram_bits_per_token(uniform, uniform, 256) == pytest.approx(8.0, abs=1e-9)
    skewed = TokenArray.from_ids(np.array([0] * 900 + [1] * 100, dtype=np.uint8))
    h = -(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1))
    assert unigram_bits_per_token(skewed, skewed, 2) == pytest.approx(h, abs=1e-2)


def test_bpe_train_save_load_round_trip(tmp_path):
    pytest.importorskip("tokenizers")
    d = _make_files(tmp_path)
    (d / "code.txt").write_text(TEXT * 20)
    files = sorted(str(p) for p in d.rglob("*.txt"))
    tok = BPETokenizer.train(files, vocab_size=300, min_frequency=2)
    assert 256 < tok.vocab_size <= 300
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) and tok.decode(ids) == TEXT
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert isinstance(again, BPETokenizer) and again.encode(TEXT) == ids and again.decode(ids) == TEXT
    meta = write_tokens(files, again, str(tmp_path / "bpe.bin"))
    arr = TokenArray.open(str(tmp_path / "bpe.bin"))
    assert arr.tokens.dtype == np.uint16 and meta["n_bytes"] > meta["n_tokens"] and arr.bytes_per_token > 1


def test_missing_packages_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora.shutil, "which", lambda name: None)
    with pytest.raises(ImportError, match="apt-get install bible-kjv"):
        corpora.kjv_corpus(str(tmp_path))
    with pytest.raises(ImportError, match="apt-get install bowtie-examples"):
        corpora.dna_corpus(str(tmp_path), path=str(tmp_path / "missing.fa.gz"))
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        BPETokenizer.train([], vocab_size=300)


def test_dna_corpus_from_fasta(tmp_path):
    import gzip

    path = tmp_path / "g.fa.gz"
    rng = np.random.default_rng(0)
    lines = [">chr test\n"] + ["".join(rng.choice(list("ACGT"), 60)) + "\n" for _ in range(3000)]
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    c = corpora.dna_corpus(str(tmp_path / "cache"), path=str(path))
    text = "".join(open(f).read() for f in sorted(c.train_files + c.val_files))
    assert set(text) <= set("ACGT\n") and text.count("\n") == 3000


def test_missing_optional_import_message(monkeypatch):
    from ssmkit.training import datasets

    real_import = builtins.__import__

    def no_sktime(name, *a, **k):
        if name.startswith("sktime"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_sktime)
    with pytest.raises(ImportError, match="pip install sktime"):
        datasets.load_acsf1()


# ---- classification / forecasting data -----------------------------------------------------------
def test_idx_reader_round_trip(tmp_path):
    import gzip
    import struct

    from ssmkit.training.datasets import load_fashion_mnist, read_idx

    imgs = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([4, 0, 9], dtype=np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">III", 3, 28, 28) + imgs.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 3) + labels.tobytes())
    np.testing.assert_array_equal(read_idx(str(tmp_path / "train-images-idx3-ubyte.gz")), imgs)
    X, y = load_fashion_mnist("train", root=str(tmp_path))
    assert X.shape == (3, 784) and X.dtype == torch.int64 and y.tolist() == [4, 0, 9]
    assert torch.equal(X[1], torch.from_numpy(imgs[1].reshape(-1).astype(np.int64)))
    with pytest.raises(ImportError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=str(tmp_path))


def test_forecast_windows_csv_and_array_batches(tmp_path):
    from ssmkit.training.datasets import ArrayBatches, forecast_windows, from_csv, split_by_time

    series = np.arange(20, dtype=np.float32)
    x, t = forecast_windows(series, context=5, horizon=3, stride=2)
    assert x.shape == (7, 5, 1) and t.shape == (7, 3, 1)
    assert x[1, :, 0].tolist() == [2, 3, 4, 5, 6] and t[1, :, 0].tolist() == [7, 8, 9]
    tr, va, te = split_by_time(series)
    assert len(tr) == 14 and len(va) == 2 and len(te) == 4 and te[0] == 16
    (tmp_path / "d.csv").write_text("a,b,c,label\n1,2,3,0\n4,5,6,1\n")
    X, y = from_csv(str(tmp_path / "d.csv"))
    assert X.shape == (2, 3, 1) and y.tolist() == [0, 1] and X[1, :, 0].tolist() == [4, 5, 6]
    full = ArrayBatches({"inputs": x, "targets": t}, batch_size=4, seed=1)
    shards = [ArrayBatches({"inputs": x, "targets": t}, 4, 1, r, 2).get(5)["inputs"] for r in range(2)]
    assert torch.equal(torch.cat(shards), full.get(5)["inputs"])
