"""Methods by name, registered the way timm registers models: ``@register_method`` on a class.

    from derd.methods import available_methods, get_method
    get_method("dafl").sections   # {'dafl': DAFLConfig, 'robust': RobustConfig}

A method class carries everything the rest of the project needs to know about it: its config
sections (``derd.config`` builds the run config from them), the ranges a search draws its keys
from (declared on the sections' fields: ``derd.settings.setting(..., search=...)``), the metric
prefixes it logs, its label and table in the paper's tables, its teachers and its published
weights per dataset. Everything else (the run config's ``method`` choices, the searched and
logged keys, the logged metric prefixes, the tables' rows) is derived from this registry.

This is the bottom layer of the package: it imports nothing from ``derd`` but the shared registry
(``derd.registry``), so that ``derd.config`` and ``derd.experts`` can import it at the top. The method
files are found on the first look into the registry (every module of this package, then the modules named
in ``$DERD_PLUGINS``), not when this module is imported: a method file imports the parts it
composes (``derd.context``, ``derd.synthesis``, ...), which may name the run config, which
imports this module.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, Iterable, Protocol, Sequence

from derd.registry import Registry

# What the run loop itself logs for every method: each loss term and each epoch's timings.
CORE_METRIC_PREFIXES = ("loss/", "time/")
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


def _discover() -> None:
    """Import every method file of the package (each registers its method)."""
    for module in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        if module.name not in FRAMEWORK_MODULES:
            importlib.import_module(f"{PACKAGE}.{module.name}")


# in the paper's tables' order (``Method.order``, then registration)
_METHODS: Registry[type[MethodClass]] = Registry("method", discover=_discover, order=lambda _, cls: cls.order)


def register_method(cls: type[MethodClass]) -> type[MethodClass]:
    """Class decorator: make a method available under ``cls.name`` (a name already taken is refused).

    Its sections must not clash with another method's section of the same name unless it is
    the same dataclass (DERD's family shares ``stage1``/``stage2``, the baselines ``robust``).
    """
    owned = method_sections()
    for section, config in cls.sections.items():
        if owned.get(section, config) is not config:
            raise ValueError(f"method {cls.name}: section {section!r} is already another dataclass")
    return _METHODS.add(cls.name, cls)


def unregister_method(name: str) -> None:
    """Remove a method (for tests and notebooks that register one of their own)."""
    _METHODS.remove(name)


def available_methods() -> list[str]:
    """Registered names in the paper's tables' order (``Method.order``, then registration)."""
    return _METHODS.names()


def get_method(name: str) -> type[MethodClass]:
    return _METHODS.get(name)


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
