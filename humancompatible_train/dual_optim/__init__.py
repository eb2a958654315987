"""Dual optimizers: hold Lagrange multipliers and return the Lagrangian to minimise."""

from .alm import ALM
from .base import ConstraintsLike, DualOptimizer
from .ialm import iALM
from .moreau import MoreauEnvelope
from .pbm import PBM
from .primal_dual import PrimalDual
from .projection import FairProjection, ProjectionInfo
from .ssg import SSG

__all__ = ["ALM", "PBM", "ConstraintsLike", "DualOptimizer", "FairProjection", "MoreauEnvelope",
           "PrimalDual", "ProjectionInfo", "SSG", "iALM"]
