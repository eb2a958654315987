"""Dual optimizers: hold Lagrange multipliers and return the Lagrangian to minimise."""

from .alm import ALM
from .base import ConstraintsLike, DualOptimizer
from .candidates import BestIterate, Candidate
from .heldout import HeldOutConstraints
from .nupi import nuPI
from .thresholds import GroupThresholds
from .primal_dual import PrimalDual
from .projection import FairProjection, ProjectionInfo

__all__ = ["ALM", "BestIterate", "Candidate", "ConstraintsLike", "DualOptimizer",
           "FairProjection", "GroupThresholds", "HeldOutConstraints", "PrimalDual", "ProjectionInfo", "nuPI"]
