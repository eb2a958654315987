r"""The serving statistics of :class:`~humancompatible_train.inference.FairInference`, under
the original fairness_training system's names and definitions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .wrapper import FairInference

__all__ = ["SERVING_SCALARS", "stats"]

# The scalar statistics of the serving state (zeroed by reset(), exposed as properties).
SERVING_SCALARS = ("cumulative_samples", "cumulative_weighted_violation", "weighted_gap_sum",
                    "weighted_gap_samples", "lambda_max", "num_batches", "squared_adjustment")


def stats(fi: FairInference) -> dict[str, Any]:
    """See :meth:`FairInference.stats`."""
    C, S = fi.num_classes, fi.num_groups
    count = fi._view("count").tolist()
    out = fi._view("out_sum").tolist()
    raw = fi._view("raw_sum").tolist()
    pos = fi._view("positive_sum").tolist()
    lab = fi._view("label_sum").tolist()
    pooled = math.nan
    per_group: dict[str, Any] = {}
    for k in range(C):
        values = []
        for s in range(S):
            n = count[k][s]
            name = f"group_{s}" if C == 1 else f"label_{k}/group_{s}"
            entry = {"count": int(n),
                     "mean_prediction": out[k][s] / n if n else math.nan,
                     "mean_raw": raw[k][s] / n if n else math.nan}
            if fi._decision:
                entry["positive_rate"] = pos[k][s] / n if n else math.nan
            if fi._residual:
                entry["mean_label"] = lab[k][s] / n if n else math.nan
            per_group[name] = entry
            if n:
                if fi._decision:
                    values.append(pos[k][s] / n)
                elif fi._residual:
                    values.append(abs(out[k][s] / n - lab[k][s] / n))
                else:
                    values.append(out[k][s] / n)
        if fi._residual and values:
            gap = max(values)
        elif len(values) >= 2:
            gap = max(values) - min(values)
        else:
            continue
        pooled = gap if math.isnan(pooled) else max(pooled, gap)
    v = {name: float(fi._view(name)) for name in SERVING_SCALARS}
    steps = fi.dual_update_count
    wn, n = v["weighted_gap_samples"], v["cumulative_samples"]
    eta_t = fi.eta_0 / math.sqrt(max(steps, 1))
    lam = fi._view("multipliers")
    return {
        "weighted_avg_fairness_gap": v["weighted_gap_sum"] / wn if wn else math.nan,
        "pooled_aggregate_gap": pooled,
        "aggregate_gap": pooled,
        "per_group": per_group,
        "lambda_max": v["lambda_max"],
        "lambda_final": float(lam.max()) if lam.numel() else 0.0,
        "total_samples": int(n),
        "num_batches": int(v["num_batches"]),
        "fairness_tolerance": fi.fairness_tolerance,
        "cumulative_weighted_violation": v["cumulative_weighted_violation"],
        "mean_squared_adjustment": v["squared_adjustment"] / n if n else math.nan,
        "eta_0": fi.eta_0,
        # The original's bound on the weighted average gap: eps + lambda_max / (eta_T N).
        "theoretical_bound": (fi.fairness_tolerance + v["lambda_max"] / (eta_t * n)
                              if n and eta_t > 0 else math.inf),
    }

