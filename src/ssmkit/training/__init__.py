"""Data (tokenizers, corpora, synthetic tasks), the training loop, checkpoints and many processes.

    from ssmkit.training import TrainConfig, run
    summary = run(TrainConfig(model={"d_model": 128, "n_layer": 4, "layers": "mamba2"}, max_steps=500))

Modules: tokenizer (bytes, BPE), corpora (text files split by file; the built-in stdlib corpus),
data (memory-mapped token arrays, batches by step), datasets (classification / forecasting),
tasks (selective copying, induction heads, MQAR), optim (AdamW groups, warm-up + cosine),
checkpoint (atomic), loop (train), evaluation (evaluate), interrupt (SIGINT/SIGTERM stop a run
cleanly), distributed (torchrun, DDP/FSDP), config (TrainConfig), run (a whole run from a config),
demo (the main job).
"""

from ssmkit._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "ssmkit.training.config",
    "ConfigError": "ssmkit.training.config",
    "ByteTokenizer": "ssmkit.training.tokenizer",
    "BPETokenizer": "ssmkit.training.tokenizer",
    "load_tokenizer": "ssmkit.training.tokenizer",
    "TextCorpus": "ssmkit.training.corpora",
    "stdlib_corpus": "ssmkit.training.corpora",
    "files_corpus": "ssmkit.training.corpora",
    "get_corpus": "ssmkit.training.corpora",
    "TokenArray": "ssmkit.training.data",
    "LMBatches": "ssmkit.training.data",
    "write_tokens": "ssmkit.training.data",
    "eval_windows": "ssmkit.training.data",
    "unigram_bits_per_token": "ssmkit.training.data",
    "selective_copying": "ssmkit.training.tasks",
    "induction_heads": "ssmkit.training.tasks",
    "associative_recall": "ssmkit.training.tasks",
    "as_lm_batch": "ssmkit.training.tasks",
    "param_groups": "ssmkit.training.optim",
    "build_optimizer": "ssmkit.training.optim",
    "save_checkpoint": "ssmkit.training.checkpoint",
    "load_checkpoint": "ssmkit.training.checkpoint",
    "train": "ssmkit.training.loop",
    "evaluate": "ssmkit.training.evaluation",
    "TrainingInterrupted": "ssmkit.training.interrupt",
    "run": "ssmkit.training.run",
    "demo": "ssmkit.training.demo",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
