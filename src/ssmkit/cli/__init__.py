"""The `ssmkit` command (also `python -m ssmkit`).

    ssmkit demo --out outputs                         # the main job: SSM vs Transformer on the stdlib corpus
    ssmkit train --config configs/stdlib_mamba2.yaml --set lr=1e-3 --set model.d_model=192
    ssmkit generate runs/ssmkit --prompt "def " --max-new-tokens 200
    ssmkit eval runs/ssmkit
    ssmkit info runs/ssmkit                           # or: ssmkit info --config run.yaml
    ssmkit bench [args for python -m benchmarks]
    ssmkit convert --to ssmkit HF_DIR OUT_DIR         # or --to hf SSMKIT_DIR OUT_DIR
    ssmkit serve runs/ssmkit --port 8000 --db sessions.db --api-key KEY   # OpenAI-compatible server

How it is built:
    app.py        the parser and `main`: one-line errors, exit codes
    errors.py     UsageError and the parser class that reports mistakes in one line
    loading.py    run / model directories (ssmkit's or a transformers checkpoint) -> model + tokenizer
    commands/     one module per subcommand, found without being listed: NAME, HELP, ORDER (its
                  place in the help), add_arguments(parser) and run(args) -> exit code

A user's mistake (unknown flag, missing file, bad config key) prints one line and exits with 2.
"""

from ssmkit.cli.app import build_parser, main
from ssmkit.cli.errors import UsageError

__all__ = ["UsageError", "build_parser", "main"]
