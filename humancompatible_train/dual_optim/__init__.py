"""Dual optimizers: hold Lagrange multipliers and return the Lagrangian to minimise."""

from .adaptive import AdaptiveDual
from .alm import ALM
from .base import ConstraintsLike, DualOptimizer
from .candidates import BestIterate, Candidate
from .heldout import HeldOutConstraints
from .nupi import nuPI
from .primal_dual import PrimalDual
from .projection import FairProjection, ProjectionInfo
from .thresholds import GroupThresholds

__all__ = ["ALM", "AdaptiveDual", "BestIterate", "Candidate", "ConstraintsLike",
           "DualOptimizer", "FairProjection", "GroupThresholds", "HeldOutConstraints",
           "PrimalDual", "ProjectionInfo", "nuPI"]
