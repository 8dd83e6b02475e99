"""Every method of the paper's tables, one short file each, registered by name (``registry``).

Importing the package imports every module in it, so a new method is one new file here:
its class, decorated with ``@register_method``, carries its config sections, metric
prefixes, label and published weights (``derd.methods.base.Method``). The run config's
``method`` key selects one (``derd.run.DistillationRun`` builds it).
"""
from __future__ import annotations

import importlib
import pkgutil

from derd.methods.base import Context, Method, Phase
from derd.methods.registry import (available_methods, display_name, footnotes, get_method, logged_prefixes,
                                   method_sections, register_method, total_epochs, unregister_method, uses_key)

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Context", "Method", "Phase", "available_methods", "display_name", "footnotes", "get_method", "logged_prefixes",
           "method_sections", "register_method", "total_epochs", "unregister_method", "uses_key"]
