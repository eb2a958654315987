r"""Choosing the iterate: keep candidates during training, return the best feasible one.

Gradient descent--ascent does not converge to a point that meets the constraints: the last
iterate oscillates around the boundary, on the training data. What a user wants is the model
that meets the constraint *on data it did not fit* with the best objective. Following
TensorFlow Constrained Optimization (Cotter, Jiang, Gupta, Wang, Narayan, You & Sridharan,
JMLR 2019, "Optimization with non-differentiable constraints with applications to fairness,
recall, churn, and other goals"; Cotter, Jiang & Sridharan, ALT 2019), :class:`BestIterate`
records one candidate per evaluation (say, per epoch) with its objective and constraint
values measured on validation data, and returns

* :meth:`BestIterate.best`: among the candidates whose largest constraint value is at most
  ``tolerance``, the one with the lowest objective; when none is, the one with the smallest
  largest constraint value (ties: lower objective). This is TFCO's
  ``find_best_candidate_index`` with the constraints collapsed to their maximum and only
  the violations ranked.
* :meth:`BestIterate.distribution`: the randomised mixture of at most two candidates with
  the lowest expected objective whose *expected* largest constraint value is at most
  ``tolerance`` (the linear program of TFCO's ``find_best_candidate_distribution`` for one
  collapsed constraint, solved exactly). Serving candidate :math:`i` with probability
  :math:`p_i` meets every constraint in expectation, since
  :math:`\max_j \mathbb E[c_j] \le \mathbb E[\max_j c_j]`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._validation import check_choice, check_int, check_real, fail

__all__ = ["BestIterate", "Candidate"]

_KEEP = ("best", "all")


@dataclass(frozen=True)
class Candidate:
    """One recorded iterate."""

    index: int  #: position in the order of :meth:`BestIterate.consider` calls (0-based)
    step: int  #: the caller's label, e.g. the epoch (default: ``index``)
    objective: float  #: lower is better (e.g. validation loss or error rate)
    violation: float  #: largest constraint value (``<= tolerance`` means feasible)
    feasible: bool
    state: Any  #: a deep copy of what was given (``None`` when not kept)


def _snapshot(state: Any) -> Any:
    """A deep copy with every tensor detached and cloned (module state dicts hold live
    tensors that the next optimizer step changes)."""
    if isinstance(state, Tensor):
        return state.detach().clone()
    if isinstance(state, Mapping):
        return {k: _snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_snapshot(v) for v in state)
    return copy.deepcopy(state)


def _as_number(name: str, value: Any) -> float:
    """A finite float from a number or a one-element tensor (NaN is never fair)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise fail(name, "a number or a one-element tensor", f"shape {tuple(value.shape)}")
        value = float(value.detach().reshape(()))
    return check_real(name, value)


def _largest(values: Any) -> float:
    """The largest constraint value of a number, tensor, sequence or mapping of them."""
    if isinstance(values, Mapping):
        parts = list(values.values())
    elif isinstance(values, (list, tuple)):
        parts = list(values)
    else:
        parts = [values]
    if not parts:
        raise fail("violation", "at least one constraint value", values)
    flat = []
    for p in parts:
        if isinstance(p, Tensor):
            if p.numel() == 0:
                raise fail("violation", "at least one constraint value", "an empty tensor")
            flat.append(p.detach().reshape(-1).to(torch.float64).cpu())
        else:
            flat.append(torch.tensor([check_real("violation", p, finite=False)],
                                     dtype=torch.float64))
    allv = torch.cat(flat)
    if not bool(torch.isfinite(allv).all()):
        raise fail("violation", "finite constraint values (NaN is never fair)", allv.tolist())
    return float(allv.max())


class BestIterate:
    r"""Keep candidate iterates and return the best one that meets the constraints.

    Args:
        tolerance: a candidate is feasible when its largest constraint value is
            :math:`\le` ``tolerance`` (default 0: the rows are already "gap - eps").
        keep: ``"best"`` (default) stores the state of the current best candidate only
            (constant memory); ``"all"`` stores every candidate's state, which
            :meth:`distribution` needs to serve a mixture.

    Use it in any loop::

        chooser = BestIterate()
        for epoch in range(epochs):
            train_one_epoch()
            with torch.no_grad():
                logit = model(x_val)
                objective = loss_fn(logit, y_val)
                rows = constraint(logit, s_val, y_val).values       # <= 0 wanted
            chooser.consider(objective, rows, {"model": model.state_dict(),
                                               "dual": dual.state_dict()}, step=epoch)
        model.load_state_dict(chooser.best().state["model"])

    The chooser is checkpointable (:meth:`state_dict`, loads with
    ``torch.load(weights_only=True)`` when the stored states are made of tensors, numbers,
    strings, lists and dicts, as module and dual-optimizer state dicts are).
    """

    def __init__(self, *, tolerance: float = 0.0, keep: str = "best") -> None:
        self.tolerance = check_real("tolerance", tolerance)
        self.keep = check_choice("keep", keep, _KEEP)
        self._objectives: list[float] = []
        self._violations: list[float] = []
        self._steps: list[int] = []
        self._states: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._objectives)

    def __repr__(self) -> str:
        best = self.best_index() if self._objectives else None
        return (f"BestIterate({len(self)} candidates, tolerance={self.tolerance}, "
                f"keep={self.keep!r}, best={best})")

    # ------------------------------------------------------------------ record
    def consider(self, objective: float | Tensor, violation: Any, state: Any = None, *,
                 step: int | None = None) -> bool:
        """Record a candidate; return whether it is now the best.

        Args:
            objective: lower is better (a number or a one-element tensor; one host read).
            violation: the constraint values (``<= 0`` wanted): a number, a tensor, or a
                sequence/mapping of them; their maximum is what counts.
            state: what to restore later (e.g. ``{"model": model.state_dict(),
                "dual": dual.state_dict()}``); deep-copied, tensors cloned.
            step: a label such as the epoch (default: the candidate's index).

        Raises a ValueError, recording nothing, for a non-finite objective or violation.
        """
        f = _as_number("objective", objective)
        v = _largest(violation)
        index = len(self._objectives)
        label = index if step is None else check_int("step", step)
        is_best = not self._objectives or (
            self._key_of(f, v) < self._key(self.best_index()))
        # Copy before recording anything: a state that cannot be copied changes nothing.
        snapshot = _snapshot(state) if self.keep == "all" or is_best else None
        self._objectives.append(f)
        self._violations.append(v)
        self._steps.append(label)
        if self.keep == "all":
            self._states[index] = snapshot
        elif is_best:
            self._states = {index: snapshot}
        return is_best

    # ------------------------------------------------------------------ read
    def _key_of(self, f: float, v: float) -> tuple[int, float, float]:
        # Feasible first, by objective; then by violation, ties by objective.
        return (0, f, v) if v <= self.tolerance else (1, v, f)

    def _key(self, i: int) -> tuple[int, float, float]:
        return self._key_of(self._objectives[i], self._violations[i])

    def best_index(self) -> int:
        """Index of the best candidate (see the module docstring for the rule)."""
        if not self._objectives:
            raise ValueError("BestIterate: no candidate yet; call consider(...) first")
        return min(range(len(self._objectives)), key=self._key)

    def candidate(self, index: int) -> Candidate:
        """The recorded candidate ``index`` (its state is ``None`` when it was not kept)."""
        index = check_int("index", index, minimum=0, maximum=len(self) - 1)
        v = self._violations[index]
        return Candidate(index, self._steps[index], self._objectives[index], v,
                         v <= self.tolerance, self._states.get(index))

    def best(self) -> Candidate:
        """The best candidate, with its stored state."""
        return self.candidate(self.best_index())

    @property
    def candidates(self) -> list[Candidate]:
        """Every recorded candidate, in order."""
        return [self.candidate(i) for i in range(len(self))]

    def distribution(self) -> Tensor:
        r"""Probabilities (float64, one per candidate, at most two non-zero) of the mixture
        with the lowest expected objective whose expected largest constraint value is
        :math:`\le` ``tolerance``; the best candidate alone when no mixture is feasible."""
        n = len(self)
        if n == 0:
            raise ValueError("BestIterate: no candidate yet; call consider(...) first")
        f, v, tol = self._objectives, self._violations, self.tolerance
        best_i = self.best_index()
        p = torch.zeros(n, dtype=torch.float64)
        if v[best_i] > tol:  # nothing feasible, not even in expectation
            p[best_i] = 1.0
            return p
        value, support = f[best_i], ((best_i, 1.0),)
        for i in range(n):  # mix an infeasible candidate with a strictly feasible one
            if v[i] <= tol:
                continue
            for j in range(n):
                if v[j] >= tol:
                    continue
                # The mixture sits on the constraint: w v_i + (1 - w) v_j = tol.
                w = (tol - v[j]) / (v[i] - v[j])
                mixed = w * f[i] + (1.0 - w) * f[j]
                if mixed < value:
                    value, support = mixed, ((i, w), (j, 1.0 - w))
        for i, w in support:
            p[i] = w
        return p

    def sample(self, generator: torch.Generator | None = None) -> Candidate:
        """Draw a candidate from :meth:`distribution` (``keep="all"`` to get its state)."""
        index = int(torch.multinomial(self.distribution(), 1, generator=generator))
        return self.candidate(index)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Candidates' metrics and stored states (copies)."""
        return {
            "tolerance": self.tolerance,
            "keep": self.keep,
            "objectives": torch.tensor(self._objectives, dtype=torch.float64),
            "violations": torch.tensor(self._violations, dtype=torch.float64),
            "steps": torch.tensor(self._steps, dtype=torch.int64),
            "states": {i: _snapshot(s) for i, s in self._states.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; checks everything before changing anything."""
        try:
            tol, keep = state_dict["tolerance"], state_dict["keep"]
            objectives, violations = state_dict["objectives"], state_dict["violations"]
            steps, states = state_dict["steps"], state_dict["states"]
        except (KeyError, TypeError):
            raise fail("state_dict", "a dict from BestIterate.state_dict()",
                       type(state_dict).__name__) from None
        tol = check_real("state_dict['tolerance']", tol)
        keep = check_choice("state_dict['keep']", keep, _KEEP)
        f = [float(x) for x in torch.as_tensor(objectives).reshape(-1).tolist()]
        v = [float(x) for x in torch.as_tensor(violations).reshape(-1).tolist()]
        s = [int(x) for x in torch.as_tensor(steps).reshape(-1).tolist()]
        if not len(f) == len(v) == len(s):
            raise fail("state_dict", "objectives, violations and steps of one length",
                       (len(f), len(v), len(s)))
        if not all(math.isfinite(x) for x in f + v):
            raise fail("state_dict", "finite objectives and violations", (f, v))
        keys = {int(k): val for k, val in dict(states).items()}
        if any(not 0 <= k < len(f) for k in keys):
            raise fail("state_dict['states']", f"indices in [0, {len(f) - 1}]", sorted(keys))
        self.tolerance, self.keep = tol, keep
        self._objectives, self._violations, self._steps = f, v, s
        self._states = {k: _snapshot(val) for k, val in keys.items()}

