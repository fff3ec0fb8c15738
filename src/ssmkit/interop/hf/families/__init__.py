"""One module per transformers model_type; each registers its `Family` (see `..registry`)."""
