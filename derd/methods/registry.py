"""Methods by name, registered the way timm registers models: ``@register_method`` on a class.

    from derd.methods import available_methods, get_method
    get_method("dafl").sections   # {'dafl': DAFLConfig, 'robust': RobustConfig}

A method class carries everything the rest of the project needs to know about it: its config
sections (``derd.config`` builds the run config from them), the metric prefixes it logs, its
label and table in the paper's tables, its teachers and its published weights per dataset.
Everything else (the run config's ``method`` choices, the searched and logged keys, the
logged metric prefixes, the tables' rows) is derived from this registry.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from derd.errors import UserError

if TYPE_CHECKING:
    from derd.config import RunConfig
    from derd.methods.base import Method

_REGISTRY: dict[str, type["Method"]] = {}

# What the run loop itself logs for every method: each loss term and each epoch's timings.
CORE_METRIC_PREFIXES = ("loss/", "time/")


def register_method(cls: type["Method"]) -> type["Method"]:
    """Class decorator: make a method available under ``cls.name``.

    Its sections must not clash with another method's section of the same name unless it is
    the same dataclass (DERD's family shares ``stage1``/``stage2``, the baselines ``robust``).
    """
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    owned = method_sections()
    for section, config in cls.sections.items():
        if owned.get(section, config) is not config:
            raise ValueError(f"method {cls.name}: section {section!r} is already another dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove a method (for tests and notebooks that register one of their own)."""
    _REGISTRY.pop(name, None)


def available_methods() -> list[str]:
    """Registered names in the paper's tables' order (``Method.order``, then registration)."""
    return sorted(_REGISTRY, key=lambda n: _REGISTRY[n].order)


def get_method(name: str) -> type["Method"]:
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(available_methods())}")
    return _REGISTRY[name]


def method_sections() -> dict[str, type]:
    """Every registered method's config sections, name -> dataclass, in the methods' order."""
    out: dict[str, type] = {}
    for name in available_methods():
        for section, config in _REGISTRY[name].sections.items():
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
    return f"{name}*" if name in _REGISTRY and _REGISTRY[name].note else name


def footnotes(names) -> list[str]:
    """The notes of the starred methods among ``names`` (each once), as footnote lines."""
    seen = dict.fromkeys(n for n in names if n in _REGISTRY and _REGISTRY[n].note)
    return [f"{display_name(n)}: {_REGISTRY[n].note}" for n in seen]


def total_epochs(cfg: "RunConfig") -> int:
    """Epochs a run of ``cfg`` trains in all (the sum of its method's phases)."""
    return sum(p.epochs for p in get_method(cfg.method).phases(cfg))

