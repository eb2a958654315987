"""The exact projection solvers, in one home for training and serving.

:class:`~humancompatible_train.dual_optim.FairProjection` (hard constraints in training),
:class:`~humancompatible_train.inference.FairModel` and
:class:`~humancompatible_train.inference.FairInference` (serving) all project onto the same
family of group-mean constraints; they share these solvers rather than keep copies:

* :mod:`.solver`: the exact, differentiable Euclidean projection of a batch onto band
  (parity, equalized odds) or fixed-interval (mean residual) constraints on cell means, with
  optional prediction bounds (:func:`project_cells`, :func:`project_groups`); it starts from
  :class:`.batch.Cells` (each cell's size and sum), solves two groups of one class in
  :mod:`.pair` (on the host for CPU tensors: the small-batch path) and differentiates with
  :mod:`.grad`;
* :mod:`.streaming`: the serving step's projection at the level of cells (no bounds: every
  row of a cell moves by one shift), on the host: the batch's band and the pooled band;
* :mod:`.pooled`: the same two bands with prediction bounds inside, row by row;
* :mod:`.decisions`: the fewest-flips projection onto a band of positive-decision rates
  (pooled, and pooled with the batch's own).

Private: the public entry points are the classes above.
"""

from .decisions import decision_band_project, decision_joint_project
from .pooled import joint_boxed, pooled_band_boxed
from .solver import project_cells, project_groups
from .streaming import band_shifts, cell_shifts, pair_qp, pooled_tolerance

__all__ = ["band_shifts", "cell_shifts", "decision_band_project", "decision_joint_project",
           "joint_boxed", "pair_qp", "pooled_band_boxed", "pooled_tolerance", "project_cells",
           "project_groups"]
