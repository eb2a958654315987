"""fairret's linear-fractional statistics by name, and what their canonical forms take."""

from __future__ import annotations

import inspect

from fairret.statistic import LinearFractionalStatistic, StackedLinearFractionalStatistic

from .._validation import fail
from ._checks import kind

__all__ = ["STATISTICS", "parts_of", "statistic_by_name", "takes_arguments"]

#: Short names used in row names, and the classes they stand for.
STATISTICS = {
    "PositiveRate": "PR",
    "TruePositiveRate": "TPR",
    "FalsePositiveRate": "FPR",
    "PositivePredictiveValue": "PPV",
    "FalseOmissionRate": "FOR",
    "Accuracy": "ACC",
    "FScore": "F",
    "FalseNegativeFalsePositiveFraction": "FNFP",
}


def statistic_by_name(name: str) -> LinearFractionalStatistic:
    """A fairret statistic from its class name; ``"A+B"`` stacks several."""
    import fairret.statistic as fs

    if not isinstance(name, str):
        raise fail("statistic", "a name", kind(name))
    parts = [p.strip() for p in name.split("+")]
    stats = []
    for p in parts:
        cls = getattr(fs, p, None)
        if p not in STATISTICS or cls is None:
            raise fail("statistic", f"one of {sorted(STATISTICS)} (or several joined by '+')",
                       p)
        stats.append(cls())
    return stats[0] if len(stats) == 1 else StackedLinearFractionalStatistic(*stats)


def parts_of(stat: LinearFractionalStatistic) -> list[LinearFractionalStatistic]:
    """The statistics of a (possibly nested) stack, in order."""
    if isinstance(stat, StackedLinearFractionalStatistic):
        return [q for p in stat.statistics for q in parts_of(p)]
    return [stat]


def takes_arguments(stat: LinearFractionalStatistic) -> bool | None:
    """Whether the statistic's canonical form takes arguments (labels); None if unknown."""
    sig = getattr(type(stat), "expected_signature", None)
    if not isinstance(sig, inspect.Signature):
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
