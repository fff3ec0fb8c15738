"""The `ssmkit` parser, built from the modules in ssmkit/cli/commands, and `main`."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ssmkit.cli.errors import Parser, UsageError, unrecognized

# Mistakes in what the user asked for (a path, a package to install, a value): one line, exit 2.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, ImportError, ValueError)


def commands() -> list:
    """Every subcommand module in ssmkit.cli.commands, in the order of the help."""
    from ssmkit.cli import commands as package

    modules = [
        importlib.import_module(f"{package.__name__}.{m.name}")
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (m.ORDER, m.NAME))


def build_parser() -> argparse.ArgumentParser:
    from ssmkit import __version__

    p = Parser(prog="ssmkit", description="State space sequence models: train, generate, evaluate, convert.")
    p.add_argument("--version", action="version", version=f"ssmkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    p.subcommands = {}
    for module in commands():
        c = sub.add_parser(
            module.NAME, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP)
        )
        module.add_arguments(c)
        c.set_defaults(run=module.run)
        p.subcommands[module.NAME] = c
    return p


def main(argv: list[str] | None = None) -> int:
    from ssmkit.training.config import ConfigError

    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise unrecognized(parser.subcommands.get(args.command, parser), extra)
        if not args.command:
            parser.print_help()
            return 2
        return args.run(args)
    except (UsageError, ConfigError) as e:
        msg = str(e).splitlines()[0]
        print(msg if msg.startswith("ssmkit") else f"ssmkit: error: {msg}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ssmkit: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("ssmkit: interrupted", file=sys.stderr)
        return 130
