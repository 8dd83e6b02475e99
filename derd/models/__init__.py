"""Model registry, classifiers and the generator."""

from derd.models import classifiers  # noqa: F401  (importing it registers the architectures)
from derd.models.generator import ConditionalGenerator, Generator
from derd.models.registry import (
    NormalizedClassifier,
    available_models,
    create_model,
    register,
    unregister_model,
)

__all__ = [
    "ConditionalGenerator",
    "Generator",
    "NormalizedClassifier",
    "available_models",
    "create_model",
    "register",
    "unregister_model",
]
