"""Dual optimizers: hold Lagrange multipliers and return the Lagrangian to minimise."""

from .adaptive import AdaptiveDual
from .alm import ALM
from .base import ConstraintsLike, DualOptimizer
from .candidates import BestIterate, Candidate
from .extrapolation import Extragradient, Optimistic
from .heldout import HeldOutConstraints
from .ialm import iALM
from .moreau import MoreauEnvelope
from .nupi import nuPI
from .pbm import PBM
from .primal_dual import PrimalDual
from .projection import FairProjection, ProjectionInfo
from .ssg import SSG
from .thresholds import GroupThresholds

__all__ = ["ALM", "PBM", "SSG", "AdaptiveDual", "BestIterate", "Candidate", "ConstraintsLike",
           "DualOptimizer", "Extragradient", "FairProjection", "GroupThresholds",
           "HeldOutConstraints", "MoreauEnvelope", "Optimistic", "PrimalDual", "ProjectionInfo",
           "iALM", "nuPI"]
