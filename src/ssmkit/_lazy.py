"""Lazy exports: `import ssmkit` stays fast and never imports an optional dependency."""

from __future__ import annotations

import importlib


def lazy_exports(module_name: str, table: dict[str, str]):
    """Return a module-level __getattr__ resolving `name` from `table[name]` (a module path) on first use."""

    def __getattr__(name: str):
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        module = importlib.import_module(target)
        value = module if target.endswith("." + name) and not hasattr(module, name) else getattr(module, name)
        return value

    return __getattr__
