"""Registries by name: one mechanism for methods, models and datasets, the way timm registers models.

Each kind keeps a ``Registry``: entries are added by a decorator or a call at import time
(``@register_method`` on a class, ``@register("resnet18")`` on a builder, ``register_dataset(spec)``), a
name already taken is refused with a clear error, and every lookup first imports what registers the
entries: the kind's own modules (``discover``, once) and the modules ``$DERD_PLUGINS`` names
(``load_plugins``), so a method, model or dataset defined outside the package is one file named there.

This module is the bottom layer of the package: it imports nothing from ``derd`` but its errors, so every
registry (``derd.methods.registry``, ``derd.models.registry``, ``derd.data``) may import it at its top.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from derd.errors import UserError

# Modules outside the package that register methods, models or datasets: comma-separated module names or .py files.
PLUGINS_ENV = "DERD_PLUGINS"

T = TypeVar("T")

_imported_plugins: set[str] = set()  # the $DERD_PLUGINS entries imported by this process


def load_plugins() -> None:
    """Import the modules ``$DERD_PLUGINS`` names (module names, or paths of .py files), each once.

    They register methods, models and datasets from outside the package. Read on every look into a
    registry, so a name added to the environment later is found too; Ray's workers inherit the driver's
    environment, so trials see the plugins.
    """
    for entry in filter(None, (e.strip() for e in os.environ.get(PLUGINS_ENV, "").split(","))):
        if entry in _imported_plugins:
            continue
        _imported_plugins.add(entry)  # before the import: the plugin registers, which looks here again
        try:
            _import_plugin(entry)
        except ImportError as err:
            _imported_plugins.discard(entry)
            raise UserError(
                f"${PLUGINS_ENV}: cannot import {entry!r} ({err}); name an importable module or a .py file"
            ) from None


def _import_plugin(entry: str) -> None:
    """Import a module by name, or a .py file by path (as ``derd_plugin_<stem>``)."""
    if not entry.endswith(".py"):
        importlib.import_module(entry)
        return
    path = Path(entry).expanduser().resolve()
    name = f"derd_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"no file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


class Registry(Generic[T]):
    """The entries of one kind by name (one registry per kind and process).

    Args:
        kind: what an entry is, as error lines name it (``method``, ``architecture``, ``dataset``).
        discover: imports the package's own modules that register entries; called once, on the first lookup.
        order: the sort key of the names a lookup lists (default: the order of registration).
    """

    def __init__(
        self,
        kind: str,
        *,
        discover: Callable[[], None] | None = None,
        order: Callable[[str, T], Any] | None = None,
    ) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._discover = discover
        self._discovered = False
        self._order = order

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; an empty name or one already taken is refused (``ValueError``:
        two definitions of one name would make every lookup depend on the import order)."""
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is registered already; give the new one another name "
                f"(or unregister the old one first)"
            )
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")``: register what it decorates under ``name``."""
        return lambda entry: self.add(name, entry)

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests and notebooks that register entries of their own)."""
        self._entries.pop(name, None)

    def load(self) -> None:
        """Import what registers entries: the package's own modules once, then the plugins."""
        if self._discover is not None and not self._discovered:
            self._discovered = True  # before the imports: each module registers, which looks here again
            self._discover()
        load_plugins()

    def names(self) -> list[str]:
        """Every registered name, in the registry's order."""
        self.load()
        if self._order is None:
            return list(self._entries)
        return sorted(self._entries, key=lambda n: self._order(n, self._entries[n]))  # type: ignore[misc]

    def get(self, name: str) -> T:
        """The entry under ``name``; an unknown name is one line listing the choices."""
        self.load()
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def registered(self) -> dict[str, T]:
        """The entries registered so far, without importing anything (what a registration checks against)."""
        return dict(self._entries)
