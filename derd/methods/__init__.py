"""Methods by name, registered the way timm registers models: ``@register_method`` on a class.

    from derd.methods import available_methods, get_method
    get_method("dafl").sections   # ('dafl', 'robust')

Each method lives in one short file of this package; importing the package registers them
all. The run config's ``method`` key selects one (``derd.run.DistillationRun`` builds it).
"""
from __future__ import annotations

from derd.errors import UserError
from derd.methods.base import Context, Method, Phase

_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or taken")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    """Registered names, in registration order (the paper's tables' order)."""
    return list(_REGISTRY)


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def uses_key(name: str, key: str) -> bool:
    """Whether a dotted config key matters to method ``name``: a key of its own sections, of no
    method's section (data, student, teachers, train, eval, seed), or a budget key (every
    method's length is set by ``stage1/stage2.{epochs,iters_per_epoch,batch_size}``)."""
    from derd.config import BUDGET_KEYS

    section = key.split(".")[0]
    method_sections = {s for cls in _REGISTRY.values() for s in cls.sections}
    return section in get_method(name).sections or section not in method_sections or key in BUDGET_KEYS


# Registration order is the order of the paper's tables.
from derd.methods import derd as _derd  # noqa: E402,F401
from derd.methods import nature as _nature  # noqa: E402,F401
from derd.methods import dafl as _dafl  # noqa: E402,F401
from derd.methods import dfad as _dfad  # noqa: E402,F401
from derd.methods import zskt as _zskt  # noqa: E402,F401
from derd.methods import cmi as _cmi  # noqa: E402,F401
from derd.methods import dfard as _dfard  # noqa: E402,F401

__all__ = ["Context", "Method", "Phase", "available_methods", "get_method", "register_method", "uses_key"]
