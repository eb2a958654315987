"""Fairness: constraints from fairret statistics, streaming group metrics, stratified batches."""

from .group_metrics import METRICS, GroupMetrics, MetricReport
from .groups import Groups
from .parity import STATISTICS, ConstraintValues, FairnessConstraint, statistic_by_name
from .stratify import StratifiedBatchSampler, create_dataloaders, create_stratified_dataloaders

__all__ = [
    "METRICS",
    "STATISTICS",
    "ConstraintValues",
    "FairnessConstraint",
    "GroupMetrics",
    "Groups",
    "MetricReport",
    "StratifiedBatchSampler",
    "create_dataloaders",
    "create_stratified_dataloaders",
    "statistic_by_name",
]
