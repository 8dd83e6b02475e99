"""Every method of the paper's tables, one short file each, registered by name (``registry``).

A new method is one new file here (or a module named in ``$DERD_PLUGINS``): its class,
decorated with ``@register_method``, carries its config sections (with the ranges a search
draws from), metric prefixes, label, published weights and its own generator terms
(``derd.methods.base.Method``). The registry imports the files on its first use. The run
config's ``method`` key selects one (``derd.run.DistillationRun`` builds it).

This package's ``__init__`` imports only the registry: ``derd.config`` imports the registry at
its top, and importing ``derd.methods.registry`` runs this file first, so nothing here may
lead back to the config. The parts a method composes live in ``derd.context``,
``derd.synthesis``, ``derd.objectives`` and ``derd.methods.base``.
"""

from __future__ import annotations

from derd.methods.registry import (
    available_methods,
    display_name,
    footnotes,
    get_method,
    logged_prefixes,
    method_sections,
    needed_teachers,
    register_method,
    total_epochs,
    unregister_method,
    uses_key,
)

__all__ = [
    "available_methods",
    "display_name",
    "footnotes",
    "get_method",
    "logged_prefixes",
    "method_sections",
    "needed_teachers",
    "register_method",
    "total_epochs",
    "unregister_method",
    "uses_key",
]
