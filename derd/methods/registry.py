"""Methods by name, registered the way timm registers models: ``@register_method`` on a class.

    from derd.methods import available_methods, get_method
    get_method("dafl").sections   # {'dafl': DAFLConfig, 'robust': RobustConfig}

A method class carries everything the rest of the project needs to know about it: its config
sections (``derd.config`` builds the run config from them), the ranges a search draws its keys
from (declared on the sections' fields: ``derd.settings.setting(..., search=...)``), the metric
prefixes it logs, its label and table in the paper's tables, its teachers and its published
weights per dataset. Everything else (the run config's ``method`` choices, the searched and
logged keys, the logged metric prefixes, the tables' rows) is derived from this registry.

This is the bottom layer of the package: it imports nothing from ``derd`` but its errors, so
that ``derd.config`` and ``derd.experts`` can import it at the top. The method files are found
on the first look into the registry (every module of this package, then the modules named in
``$DERD_PLUGINS``), not when this module is imported: a method file imports the parts it
composes (``derd.context``, ``derd.synthesis``, ...), which may name the run config, which
imports this module.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, ClassVar, Iterable, Protocol, Sequence

from derd.errors import UserError

# What the run loop itself logs for every method: each loss term and each epoch's timings.
CORE_METRIC_PREFIXES = ("loss/", "time/")
# Modules outside the package that register methods or datasets: comma-separated module names or .py files.
PLUGINS_ENV = "DERD_PLUGINS"
PACKAGE = __name__.rpartition(".")[0]  # derd.methods
FRAMEWORK_MODULES = ("base", "registry")  # the package's modules that define no method


class MethodClass(Protocol):
    """What the registry reads from a method class (``derd.methods.base.Method`` documents each)."""

    name: ClassVar[str]
    label: ClassVar[str]
    order: ClassVar[int]
    table: ClassVar[int]
    sections: ClassVar[dict[str, type]]
    metric_prefixes: ClassVar[tuple[str, ...]]
    teachers: ClassVar[tuple[str, ...]]
    presets: ClassVar[dict[str, dict[str, Any]]]
    note: ClassVar[str]

    @classmethod
    def phases(cls, cfg: Any) -> Sequence[Any]: ...


class _Registry:
    """The registered methods and what has been imported to find them (one per process)."""

    def __init__(self) -> None:
        self.methods: dict[str, type[MethodClass]] = {}
        self.discovered = False
        self.plugins: set[str] = set()


_STATE = _Registry()


def load_plugins() -> None:
    """Import the modules ``$DERD_PLUGINS`` names (module names, or paths of .py files), each once.

    They register methods (``@register_method``) and datasets (``derd.data.register_dataset``) from
    outside the package. Read on every look into a registry, so a name added to the environment
    later is found too; Ray's workers inherit the driver's environment, so trials see the plugins.
    """
    for entry in filter(None, (e.strip() for e in os.environ.get(PLUGINS_ENV, "").split(","))):
        if entry in _STATE.plugins:
            continue
        _STATE.plugins.add(entry)
        try:
            if entry.endswith(".py"):
                path = Path(entry).expanduser().resolve()
                name = f"derd_plugin_{path.stem}"
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ImportError(f"no file {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(entry)
        except ImportError as err:
            _STATE.plugins.discard(entry)
            raise UserError(f"${PLUGINS_ENV}: cannot import {entry!r} ({err}); name an importable module or a .py "
                            f"file") from None


def _discover() -> None:
    """Import every method file of the package once, then the plugins."""
    if not _STATE.discovered:
        _STATE.discovered = True  # before the imports: each method file registers, which looks here again
        folder = str(Path(__file__).resolve().parent)
        for module in pkgutil.iter_modules([folder]):
            if module.name not in FRAMEWORK_MODULES:
                importlib.import_module(f"{PACKAGE}.{module.name}")
    load_plugins()


def register_method(cls: type[MethodClass]) -> type[MethodClass]:
    """Class decorator: make a method available under ``cls.name``.

    Its sections must not clash with another method's section of the same name unless it is
    the same dataclass (DERD's family shares ``stage1``/``stage2``, the baselines ``robust``).
    """
    if not cls.name or cls.name in _STATE.methods:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    owned = method_sections()
    for section, config in cls.sections.items():
        if owned.get(section, config) is not config:
            raise ValueError(f"method {cls.name}: section {section!r} is already another dataclass")
    _STATE.methods[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (for tests and notebooks that register one of their own)."""
    _STATE.methods.pop(name, None)


def available_methods() -> list[str]:
    """Registered names in the paper's tables' order (``Method.order``, then registration)."""
    _discover()
    return sorted(_STATE.methods, key=lambda n: _STATE.methods[n].order)


def get_method(name: str) -> type[MethodClass]:
    _discover()
    if name not in _STATE.methods:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}")
    return _STATE.methods[name]


def method_sections(names: Iterable[str] | None = None) -> dict[str, type]:
    """The config sections of ``names`` (default: every registered method), name -> dataclass, in the
    methods' order."""
    out: dict[str, type] = {}
    for name in available_methods() if names is None else names:
        for section, config in get_method(name).sections.items():
            out.setdefault(section, config)
    return out


def uses_key(name: str, key: str) -> bool:
    """Whether a dotted config key matters to method ``name``: a key of its own sections, or of a
    section no method owns (data, student, teachers, train, budget, eval, the top-level keys)."""
    section = key.split(".")[0]
    return section in get_method(name).sections or section not in method_sections()


def logged_prefixes() -> tuple[str, ...]:
    """The metric prefixes a run of any registered method logs per epoch."""
    extra = [p for name in available_methods() for p in get_method(name).metric_prefixes]
    return tuple(dict.fromkeys([*CORE_METRIC_PREFIXES, *extra]))


def display_name(name: str) -> str:
    """A method's name as tables and summaries print it: starred when it carries a note."""
    return f"{name}*" if name in available_methods() and get_method(name).note else name


def footnotes(names: Iterable[str]) -> list[str]:
    """The notes of the starred methods among ``names`` (each once), as footnote lines."""
    seen = dict.fromkeys(n for n in names if n in available_methods() and get_method(n).note)
    return [f"{display_name(n)}: {get_method(n).note}" for n in seen]


def needed_teachers(names: Iterable[str]) -> tuple[str, ...]:
    """The experts (``natural``, ``robust``) any of the methods ``names`` distils from, in that order."""
    wanted = {kind for name in names for kind in get_method(name).teachers}
    return tuple(kind for kind in ("natural", "robust") if kind in wanted)


def total_epochs(cfg: Any) -> int:
    """Epochs a run of ``cfg`` (a ``derd.config.RunConfig``) trains in all (the sum of its method's phases)."""
    return sum(p.epochs for p in get_method(cfg.method).phases(cfg))
