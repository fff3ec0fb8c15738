"""A whole run from a TrainConfig: corpus -> tokenizer -> token arrays -> model -> train -> save.

    summary = run(TrainConfig.from_yaml("configs/stdlib_mamba2.yaml"))

What `ssmkit train` and the demo call. The out_dir ends up holding checkpoint.pt (to resume),
metrics.jsonl, train_config.json, and model/ (save_pretrained + the tokenizer) for generate/eval.
A run whose checkpoint is already at max_steps trains nothing (result.stopped == "finished").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ssmkit._files import write_bytes_atomic
from ssmkit.training import distributed as D
from ssmkit.training.checkpoint import CHECKPOINT_NAME
from ssmkit.training.config import ConfigError, TrainConfig
from ssmkit.training.corpora import TextCorpus, get_corpus
from ssmkit.training.data import LMBatches, TokenArray, eval_windows, token_dir, write_tokens
from ssmkit.training.loop import train
from ssmkit.training.tokenizer import get_tokenizer, load_tokenizer

MODEL_DIR = "model"


@dataclass
class LMData:
    corpus: TextCorpus
    tokenizer: object
    train: TokenArray
    val: TokenArray


def _tokenizer(cfg: TrainConfig, corpus: TextCorpus, info: D.DistInfo):
    """cfg.tokenizer: bytes, a saved one, or a BPE trained on the train split once (local rank 0) and
    kept under cfg.cache_dir."""
    if cfg.tokenizer != "bpe":
        return get_tokenizer(cfg.tokenizer)
    tok_dir = os.path.join(cfg.cache_dir, f"{corpus.name}-{corpus.fingerprint}-bpe{cfg.bpe_vocab_size}")
    if info.local_rank == 0 and not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        get_tokenizer("bpe", corpus.train_files, cfg.bpe_vocab_size).save(tok_dir)
    D.barrier()
    return load_tokenizer(tok_dir)


def prepare_data(cfg: TrainConfig, info: D.DistInfo | None = None) -> LMData:
    """Corpus and tokenizer by name; token arrays cached under cfg.cache_dir (local rank 0 writes them)."""
    info = info or D.DistInfo()
    corpus = get_corpus(cfg.corpus, cfg.cache_dir, cfg.val_fraction)
    tokenizer = _tokenizer(cfg, corpus, info)
    arrays = {}
    for split, files in (("train", corpus.train_files), ("val", corpus.val_files)):
        path = os.path.join(token_dir(cfg.cache_dir, corpus, tokenizer), f"{split}.bin")
        if info.local_rank == 0:  # one writer per machine (nodes may not share a disk); writes are atomic
            write_tokens(files, tokenizer, path, fingerprint=corpus.fingerprint)
        D.barrier()
        arrays[split] = TokenArray.open(path)
    return LMData(corpus, tokenizer, arrays["train"], arrays["val"])


def build_model(model_args: dict, vocab_size: int, seed: int = 0):
    """SSMForCausalLM from SSMConfig arguments (vocab_size from the tokenizer), seeded. A bad argument
    (a value, or an unknown key inside layer_kwargs) is a ConfigError naming it."""
    from ssmkit.models.config import SSMConfig
    from ssmkit.models.heads import SSMForCausalLM

    args = {**model_args, "vocab_size": vocab_size}
    torch.manual_seed(seed)
    try:
        return SSMForCausalLM(SSMConfig(**args))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {str(e).splitlines()[0]}") from None


def count_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _write_config(cfg: TrainConfig) -> None:
    text = json.dumps(cfg.to_dict(), indent=2)
    write_bytes_atomic(os.path.join(cfg.out_dir, "train_config.json"), text.encode())


def run(cfg: TrainConfig, desc: str = "train") -> dict:
    """Train as configured (resuming from cfg.out_dir when there is a checkpoint); returns a summary."""
    info = D.setup(cfg.device)
    data = prepare_data(cfg, info)
    model = build_model(cfg.model, data.tokenizer.vocab_size, cfg.seed).to(info.device)
    batches = LMBatches(data.train, cfg.seq_len, cfg.batch_size, cfg.seed, info.rank, info.world_size)
    windows = eval_windows(data.val, cfg.seq_len, cfg.eval_windows)
    # A resumed run's config is written once the checkpoint is known to be this model's.
    resuming = cfg.resume and os.path.isfile(os.path.join(cfg.out_dir, CHECKPOINT_NAME))
    if info.is_main and not resuming:
        _write_config(cfg)
    result = train(
        model,
        batches,
        cfg,
        val_windows=windows,
        bytes_per_token=data.val.bytes_per_token,
        out_dir=cfg.out_dir,
        info=info,
        desc=desc,
    )
    model_dir = os.path.join(cfg.out_dir, MODEL_DIR)
    finished_before = result.stopped == "finished" and os.path.isfile(os.path.join(model_dir, "config.json"))
    if info.is_main and not finished_before:  # a finished run's model/ is already written
        if resuming:
            _write_config(cfg)
        model.save_pretrained(model_dir)
        data.tokenizer.save(model_dir)
    D.barrier()
    return {
        "model": model,
        "tokenizer": data.tokenizer,
        "data": data,
        "result": result,
        "n_params": count_parameters(model),
        "out_dir": cfg.out_dir,
    }
