"""DERD: data-free experts-guided robustness distillation, as a plain library.

No Ray or MLflow imports live here; ``tuning`` and ``analysis`` build on this package.
"""

__version__ = "0.1.0"
