"""Dual optimizers: hold Lagrange multipliers and return the Lagrangian to minimise."""

from .alm import ALM
from .base import ConstraintsLike, DualOptimizer
from .extrapolation import Extragradient, Optimistic
from .ialm import iALM
from .moreau import MoreauEnvelope
from .pbm import PBM
from .primal_dual import PrimalDual
from .projection import FairProjection, ProjectionInfo
from .ssg import SSG

__all__ = ["ALM", "PBM", "SSG", "ConstraintsLike", "DualOptimizer", "Extragradient",
           "FairProjection", "MoreauEnvelope", "Optimistic", "PrimalDual", "ProjectionInfo",
           "iALM"]
