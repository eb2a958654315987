"""Dual optimizers: hold Lagrange multipliers and return the Lagrangian to minimise."""

from .alm import ALM
from .base import ConstraintsLike, DualOptimizer
from .exact_projection import FairProjection, ProjectionInfo
from .primal_dual import PrimalDual

__all__ = ["ALM", "ConstraintsLike", "DualOptimizer", "FairProjection", "PrimalDual",
           "ProjectionInfo"]
