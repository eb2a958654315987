r"""Extragradient and optimistic updates of the primal and dual variables together.

A dual optimizer alone gives two orders of gradient descent--ascent with the two-line loop:

* ``dual.forward_update(loss, c)`` -- the dual step first, then the Lagrangian at the new
  multipliers: *alternating, dual-then-primal* updates (Cooper's
  ``AlternatingDualPrimalOptimizer``), with no second evaluation of the model;
* ``dual.forward(loss, c)``, ``backward``, ``dual.step(c)`` -- *simultaneous* updates.

This module adds the two extrapolation methods for saddle points:

* :class:`Extragradient` (Korpelevich 1976): two evaluations of the model per step, so it
  needs either two calls (:meth:`Extragradient.extrapolation` then :meth:`Extragradient.step`,
  each after its own forward pass) or a closure (:meth:`Extragradient.roll`);
* :class:`Optimistic` (Popov 1980; "extrapolation from the past" of Gidel et al., ICLR 2019):
  one evaluation per step, so the two-line loop stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import fail
from .base import ConstraintsLike, DualOptimizer
from .moreau import swapped_gradients

__all__ = ["Extragradient", "Optimistic"]


def _check_pair(optimizer: Any, dual: Any) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer) or isinstance(optimizer, DualOptimizer):
        raise fail("optimizer", "a torch.optim.Optimizer of the model's parameters",
                   type(optimizer).__name__)
    if not isinstance(dual, DualOptimizer):
        raise fail("dual", "a DualOptimizer", type(dual).__name__)


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _dual_snapshot(dual: DualOptimizer) -> list[dict[str, Any]]:
    """Copies of every group's multipliers and state (tensors cloned)."""
    return [{"duals": g["params"][0].detach().clone(),
             "state": {k: v.clone() if isinstance(v, Tensor) else v
                       for k, v in dual.state[g["params"][0]].items()}}
            for g in dual.param_groups]


def _dual_restore(dual: DualOptimizer, snapshot: list[dict[str, Any]]) -> None:
    with torch.no_grad():
        for g, saved in zip(dual.param_groups, snapshot):
            duals = g["params"][0]
            duals.copy_(saved["duals"])
            state = dual.state[duals]
            for k, v in saved["state"].items():
                if isinstance(v, Tensor):
                    state[k].copy_(v)
                else:
                    state[k] = v


class Extragradient:
    r"""Extragradient steps of a primal optimizer and a dual optimizer together.

    With :math:`G(x, \lambda) = \nabla_x \mathcal L` and :math:`c(x)` the dual ascent
    direction, one step from :math:`(x_t, \lambda_t)` is

    .. math::

        x_{t+1/2} = \texttt{opt}(x_t;\ G(x_t, \lambda_t)), \qquad
        \lambda_{t+1/2} = \texttt{dual}(\lambda_t;\ c(x_t)),

        x_{t+1} = \texttt{opt}(x_t;\ G(x_{t+1/2}, \lambda_{t+1/2})), \qquad
        \lambda_{t+1} = \texttt{dual}(\lambda_t;\ c(x_{t+1/2})),

    where :math:`\texttt{opt}` and :math:`\texttt{dual}` are the given optimizers' steps
    (projection included). With SGD and plain dual ascent it is the extragradient method of
    Korpelevich (1976); with a stateful primal optimizer (Adam) its state advances at both
    half steps, as Extra-Adam of Gidel et al. (ICLR 2019). The dual's step counter advances
    once per step (its state is restored with its multipliers before the second half).

    Two forward passes per step; either call the phases, each after its own forward pass::

        for x, y in loader:
            eg.extrapolation(*losses(x, y))   # at (x_t, lambda_t); moves to the midpoint
            eg.step(*losses(x, y))            # at the midpoint; moves from (x_t, lambda_t)

    (``losses`` returns ``(loss, constraints)``) or hand a closure to :meth:`roll`. Each phase
    zeroes the primal gradients, back-propagates the Lagrangian and steps both optimizers.
    Out of order (two extrapolations, or a step without one) raises a ValueError and changes
    nothing. The midpoint snapshot (primal parameters, dual multipliers and state) is in
    :meth:`state_dict`, so a checkpoint between the phases resumes exactly.

    References: G. M. Korpelevich, "The extragradient method for finding saddle points and
    other problems", Ekonomika i Matematicheskie Metody 12, 1976; G. Gidel, H. Berard,
    G. Vignoud, P. Vincent, S. Lacoste-Julien, "A variational inequality perspective on
    generative adversarial networks", ICLR 2019.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, dual: DualOptimizer) -> None:
        _check_pair(optimizer, dual)
        self.optimizer, self.dual = optimizer, dual
        self.state: dict[str, Any] = {"phase": 0, "primal": [], "dual": []}

    def _lagrangian_backward(self, loss: Tensor, constraints: ConstraintsLike) -> Tensor:
        lagrangian = self.dual.forward(loss, constraints)  # checks the inputs first
        self.optimizer.zero_grad()
        lagrangian.backward()
        return lagrangian.detach()

    def extrapolation(self, loss: Tensor, constraints: ConstraintsLike,
                      dual_constraints: ConstraintsLike | None = None) -> Tensor:
        """First half: from :math:`(x_t, \\lambda_t)` to the midpoint. Returns the Lagrangian
        at :math:`(x_t, \\lambda_t)` (detached)."""
        if self.state["phase"] != 0:
            raise ValueError("Extragradient.extrapolation: expected step() to follow the "
                             "previous extrapolation(), got a second extrapolation()")
        lagrangian = self._lagrangian_backward(loss, constraints)
        primal = [p.detach().clone() for p in _params(self.optimizer)]
        dual = _dual_snapshot(self.dual)
        self.dual.step(constraints, dual_constraints)
        self.optimizer.step()
        self.state = {"phase": 1, "primal": primal, "dual": dual}
        return lagrangian

    def step(self, loss: Tensor, constraints: ConstraintsLike,
             dual_constraints: ConstraintsLike | None = None) -> Tensor:
        """Second half: the gradients at the midpoint move :math:`(x_t, \\lambda_t)`. Returns
        the Lagrangian at the midpoint (detached)."""
        if self.state["phase"] != 1:
            raise ValueError("Extragradient.step: expected extrapolation() first, got step() "
                             "without it")
        lagrangian = self._lagrangian_backward(loss, constraints)
        midpoint = _dual_snapshot(self.dual)
        _dual_restore(self.dual, self.state["dual"])
        try:
            self.dual.step(constraints, dual_constraints)
        except ValueError:
            # Bad values raise on every rank together (the dual checks them collectively):
            # back to the midpoint, so the call changes nothing.
            _dual_restore(self.dual, midpoint)
            raise
        with torch.no_grad():
            for p, saved in zip(_params(self.optimizer), self.state["primal"]):
                p.copy_(saved)
        self.optimizer.step()
        self.state = {"phase": 0, "primal": [], "dual": []}
        return lagrangian

    def roll(self, closure: Callable[[], Sequence[Any]]) -> Tensor:
        """A whole step: ``closure()`` runs the model and returns ``(loss, constraints)`` or
        ``(loss, constraints, dual_constraints)``; it is called twice. Returns the Lagrangian
        at :math:`(x_t, \\lambda_t)`."""
        first = self.extrapolation(*closure())
        self.step(*closure())
        return first

    def state_dict(self) -> dict[str, Any]:
        """The phase and the midpoint snapshot (copies); loads with ``weights_only=True``."""
        return {"phase": self.state["phase"],
                "primal": [t.clone() for t in self.state["primal"]],
                "dual": [{"duals": s["duals"].clone(),
                          "state": {k: v.clone() if isinstance(v, Tensor) else v
                                    for k, v in s["state"].items()}}
                         for s in self.state["dual"]]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore phase and snapshot; checks sizes before any change."""
        try:
            phase, primal, dual = state_dict["phase"], state_dict["primal"], state_dict["dual"]
        except (KeyError, TypeError):
            raise fail("state_dict", "a dict from Extragradient.state_dict() with keys "
                       "'phase', 'primal', 'dual'", type(state_dict).__name__) from None
        params = _params(self.optimizer)
        if phase not in (0, 1):
            raise fail("state_dict['phase']", "0 or 1", phase)
        if phase == 1:
            shapes = [tuple(p.shape) for p in params]
            got = [tuple(t.shape) if isinstance(t, Tensor) else None for t in primal]
            if got != shapes:
                raise fail("state_dict['primal']", f"tensors of shapes {shapes}", got)
            if len(dual) != len(self.dual.param_groups) or any(
                    tuple(s["duals"].shape) != (g["m"],)
                    for s, g in zip(dual, self.dual.param_groups)):
                raise fail("state_dict['dual']", f"one snapshot per group of sizes "
                           f"{[g['m'] for g in self.dual.param_groups]}",
                           [tuple(s["duals"].shape) for s in dual])
        self.state = {"phase": phase, "primal": [t.clone() for t in primal] if phase else [],
                      "dual": [{"duals": s["duals"].clone(),
                                "state": {k: v.clone() if isinstance(v, Tensor) else v
                                          for k, v in s["state"].items()}}
                               for s in dual] if phase else []}


class Optimistic:
    r"""Optimistic gradient descent--ascent on the primal and dual variables together.

    One evaluation per step, at :math:`(x_t, \lambda_t)`, and the previous step's directions
    (:math:`g_{-1} = g_0`, :math:`c_{-1} = c_0`, so the first step is a plain one):

    .. math::

        x_{t+1} = \texttt{opt}\big(x_t;\ 2 g_t - g_{t-1}\big), \quad
        g_t = \nabla_x \mathcal L(x_t, \lambda_t), \qquad
        \lambda_{t+1} = \texttt{dual}\big(\lambda_t;\ 2 c_t - c_{t-1}\big).

    With SGD and plain dual ascent this is optimistic gradient descent--ascent, the
    "extrapolation from the past" of Gidel et al. (ICLR 2019), which equals extragradient
    with the midpoint gradient reused from the previous step (Popov 1980). The two-line loop
    stays (simultaneous: the Lagrangian is at :math:`\lambda_t`)::

        og = Optimistic(optimizer, dual)
        for x, y in loader:
            og.zero_grad()
            og.forward_update(loss, constraints).backward()   # dual step inside
            og.step()                                         # primal step

    The inner optimizer sees :math:`2g_t - g_{t-1}` during its step; ``.grad`` is left as
    found. Previous gradients and constraint values are in :meth:`state_dict`. With a
    ``process_group`` the optimistic values :math:`2c_t - c_{t-1}` are averaged, which equals
    the optimistic step on averaged values.

    References: L. D. Popov, "A modification of the Arrow-Hurwicz method for search of saddle
    points", Math. Notes 28, 1980; Gidel et al., ICLR 2019 (see :class:`Extragradient`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, dual: DualOptimizer) -> None:
        _check_pair(optimizer, dual)
        self.optimizer, self.dual = optimizer, dual
        self.state: dict[str, Any] = {"grads": [None] * len(_params(optimizer)),
                                      "constraints": []}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def forward_update(self, loss: Tensor, constraints: ConstraintsLike,
                       dual_constraints: ConstraintsLike | None = None) -> Tensor:
        """The Lagrangian at :math:`\\lambda_t`, after the optimistic dual step."""
        lagrangian = self.dual.forward(loss, constraints)  # checks the inputs
        source = constraints if dual_constraints is None else dual_constraints
        now = [p.detach() for p in self.dual._split(source, "dual_constraints")]
        # Non-finite values make non-finite optimistic values, which the dual step refuses
        # (collectively under a process group) before it changes anything.
        before = self.state["constraints"] or now
        optimistic = [2.0 * c - b for c, b in zip(now, before)]
        self.dual.step(constraints, optimistic)
        self.state["constraints"] = [c.clone() for c in now]
        return lagrangian

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """The primal optimizer's step on :math:`2 g_t - g_{t-1}`."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = _params(self.optimizer)
        grads = self.state["grads"]
        grads += [None] * (len(params) - len(grads))  # groups added to the optimizer later
        with torch.no_grad():
            pairs = [(i, p) for i, p in enumerate(params) if p.grad is not None]
            if not pairs:
                self.optimizer.step()
                return loss
            found = [p.grad for _, p in pairs]
            prev = [found[k] if grads[i] is None else grads[i] for k, (i, _) in enumerate(pairs)]
            # g + (g - q), one multi-tensor kernel per operation instead of two per parameter.
            optimistic = torch._foreach_sub(found, prev)
            torch._foreach_add_(optimistic, found)
            with swapped_gradients([p for _, p in pairs], optimistic):
                self.optimizer.step()
            kept = [grads[i] for i, _ in pairs]
            if all(k is not None and k.shape == g.shape and k.dtype == g.dtype
                   and k.device == g.device for k, g in zip(kept, found)):
                torch._foreach_copy_(kept, found)
            else:
                for (i, _), g in zip(pairs, found):
                    grads[i] = g.detach().clone()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"grads": [None if g is None else g.clone() for g in self.state["grads"]],
                "constraints": [c.clone() for c in self.state["constraints"]]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            grads, constraints = state_dict["grads"], state_dict["constraints"]
        except (KeyError, TypeError):
            raise fail("state_dict", "a dict from Optimistic.state_dict() with keys 'grads', "
                       "'constraints'", type(state_dict).__name__) from None
        params = _params(self.optimizer)
        if len(grads) != len(params) or any(
                g is not None and g.shape != p.shape for g, p in zip(grads, params)):
            raise fail("state_dict['grads']", f"{len(params)} entries shaped like the "
                       "parameters (or None)", [None if g is None else tuple(g.shape)
                                                for g in grads])
        sizes = [g["m"] for g in self.dual.param_groups]
        if constraints and [c.numel() for c in constraints] != sizes:
            raise fail("state_dict['constraints']", f"one tensor per group of sizes {sizes}",
                       [c.numel() for c in constraints])
        self.state = {"grads": [None if g is None else g.clone() for g in grads],
                      "constraints": [c.clone() for c in constraints]}
