"""A whole run from a TrainConfig: corpus -> tokenizer -> token arrays -> model -> train -> save.

    summary = run(TrainConfig.from_yaml("configs/stdlib_mamba2.yaml"))

What `ssmkit train` and the demo call. The out_dir ends up holding checkpoint.pt (to resume),
metrics.jsonl, train_config.json, and model/ (save_pretrained + the tokenizer) for generate/eval.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ssmkit.training import distributed as D
from ssmkit.training.config import ConfigError, TrainConfig
from ssmkit.training.corpora import TextCorpus, get_corpus
from ssmkit.training.data import LMBatches, TokenArray, eval_windows, write_tokens
from ssmkit.training.loop import train
from ssmkit.training.tokenizer import get_tokenizer, load_tokenizer

MODEL_DIR = "model"


@dataclass
class LMData:
    corpus: TextCorpus
    tokenizer: object
    train: TokenArray
    val: TokenArray


def prepare_data(cfg: TrainConfig, info: D.DistInfo | None = None) -> LMData:
    """Corpus and tokenizer by name; token arrays cached under cfg.cache_dir (local rank 0 writes them)."""
    info = info or D.DistInfo()
    corpus = get_corpus(cfg.corpus, cfg.cache_dir, cfg.val_fraction)
    tok_dir = os.path.join(cfg.cache_dir, f"{corpus.name}-{corpus.fingerprint}-{cfg.tokenizer}")
    if cfg.tokenizer == "bpe":
        tok_dir += f"{cfg.bpe_vocab_size}"
        if info.local_rank == 0 and not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
            get_tokenizer("bpe", corpus.train_files, cfg.bpe_vocab_size).save(tok_dir)
        D.barrier()
        tokenizer = load_tokenizer(tok_dir)
    else:
        tokenizer = get_tokenizer(cfg.tokenizer)
    arrays = {}
    for split, files in (("train", corpus.train_files), ("val", corpus.val_files)):
        path = os.path.join(tok_dir, f"{split}.bin")
        if info.local_rank == 0:  # one writer per machine (nodes may not share a disk); writes are atomic
            write_tokens(files, tokenizer, path, fingerprint=corpus.fingerprint)
        D.barrier()
        arrays[split] = TokenArray.open(path)
    return LMData(corpus, tokenizer, arrays["train"], arrays["val"])


def build_model(model_args: dict, vocab_size: int, seed: int = 0):
    """SSMForCausalLM from SSMConfig arguments (vocab_size from the tokenizer), seeded."""
    from ssmkit.models.config import SSMConfig
    from ssmkit.models.heads import SSMForCausalLM

    args = {**model_args, "vocab_size": vocab_size}
    try:
        cfg = SSMConfig(**args)
    except TypeError as e:
        raise ConfigError(f"model: {e}") from None
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    torch.manual_seed(seed)
    return SSMForCausalLM(cfg)


def count_parameters(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def run(cfg: TrainConfig, desc: str = "train") -> dict:
    """Train as configured (resuming from cfg.out_dir when there is a checkpoint); returns a summary."""
    info = D.setup(cfg.device)
    data = prepare_data(cfg, info)
    model = build_model(cfg.model, data.tokenizer.vocab_size, cfg.seed).to(info.device)
    batches = LMBatches(data.train, cfg.seq_len, cfg.batch_size, cfg.seed, info.rank, info.world_size)
    windows = eval_windows(data.val, cfg.seq_len, cfg.eval_windows)
    if info.is_main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "train_config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
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
    if info.is_main:
        model_dir = os.path.join(cfg.out_dir, MODEL_DIR)
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
