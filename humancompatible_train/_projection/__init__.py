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
* :mod:`.streaming`: the small exact problems of the streaming step (the weighted band
  projection of group values and the two-group QP with a batch and a pooled band);
* :mod:`.decisions`: the fewest-flips projection onto a band of positive-decision rates.

Private: the public entry points are the classes above.
"""

from .decisions import decision_band_project
from .solver import project_cells, project_groups
from .streaming import band_project, two_slab_qp

__all__ = ["band_project", "decision_band_project", "project_cells", "project_groups",
           "two_slab_qp"]
