"""Fairness: constraints from fairret statistics, streaming group metrics, stratified batches.

* :class:`FairnessConstraint` (``parity``): constraint rows for a dual optimizer;
* :class:`GroupMetrics` (``group_metrics``): exact streaming per-group metrics;
* :class:`StratifiedBatchSampler` (``stratify``): batches with the dataset's proportions;
* :class:`Groups` (``groups``): group membership in every accepted layout.
"""

from .group_metrics import METRICS, GroupMetrics, MetricReport
from .groups import Groups, GroupsLike
from .parity import STATISTICS, ConstraintValues, FairnessConstraint, statistic_by_name
from .stratify import StratifiedBatchSampler, create_dataloaders, create_stratified_dataloaders

__all__ = [
    "METRICS",
    "STATISTICS",
    "ConstraintValues",
    "FairnessConstraint",
    "GroupMetrics",
    "Groups",
    "GroupsLike",
    "MetricReport",
    "StratifiedBatchSampler",
    "create_dataloaders",
    "create_stratified_dataloaders",
    "statistic_by_name",
]
