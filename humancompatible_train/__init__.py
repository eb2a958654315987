"""humancompatible_train: train PyTorch models under (fairness) constraints."""

import logging

from .dual_optim import ALM, DualOptimizer, PrimalDual

__version__ = "0.1.0"

logging.getLogger("humancompatible_train").addHandler(logging.NullHandler())

__all__ = ["ALM", "DualOptimizer", "PrimalDual", "__version__"]
