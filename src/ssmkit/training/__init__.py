"""Data (tokenizers, corpora, synthetic tasks), the training loop and checkpoints."""
