r"""Penalty-barrier method (PBM) with multiplicative dual updates and adaptive penalties."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import boolean, check_real, choice, fail, integer, real
from .base import DualOptimizer

__all__ = ["PBM", "penalty_barrier", "penalty_barrier_derivative"]

PENALTY_BARRIERS = ("quadratic_logarithmic", "quadratic_reciprocal")
PENALTY_UPDATES = ("const", "dimin", "dimin_dual", "dimin_adapt", "aimd", "alm")
# Where each function leaves the quadratic branch t + t^2/2 for its barrier branch.
_KNOT = {"quadratic_logarithmic": -0.5, "quadratic_reciprocal": -1.0 / 3.0}


def penalty_barrier(t: Tensor, kind: str) -> Tensor:
    r"""The penalty-barrier function :math:`\varphi(t)` (Ben-Tal & Zibulevsky, 1997).

    Both are :math:`t + t^2/2` for :math:`t \ge \tau` and a barrier below, joined with equal
    value and slope: quadratic-logarithmic (:math:`\tau = -1/2`)
    :math:`-\tfrac14 \log(-2t) - \tfrac38`; quadratic-reciprocal (:math:`\tau = -1/3`)
    :math:`\tfrac{32}{27}\,\tfrac{1}{1 - t} - \tfrac76`. :math:`\varphi(0) = 0`,
    :math:`\varphi'(0) = 1`, :math:`\varphi' > 0`.
    """
    return _value(t, *_split(t, kind), kind)


def penalty_barrier_derivative(t: Tensor, kind: str) -> Tensor:
    r""":math:`\varphi'(t)`: :math:`1 + t` above the knot, :math:`-1/(4t)` (logarithmic) or
    :math:`\tfrac{32}{27}(1 - t)^{-2}` (reciprocal) below."""
    return _slope(t, *_split(t, kind), kind)


def _split(t: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(whether t is on the quadratic branch, t clamped to the barrier branch). The barrier
    branch is evaluated at min(t, knot) so that the branch torch.where drops stays finite and
    its gradient (multiplied by 0) never turns into NaN. Shared by the value and the slope."""
    knot = _KNOT[kind]
    return t >= knot, t.clamp(max=knot)


def _value(t: Tensor, above: Tensor, low: Tensor, kind: str) -> Tensor:
    if kind == "quadratic_logarithmic":
        barrier = -0.25 * torch.log(-2.0 * low) - 0.375
    else:
        barrier = (32.0 / 27.0) / (1.0 - low) - 7.0 / 6.0
    return torch.where(above, t + 0.5 * t * t, barrier)


def _slope(t: Tensor, above: Tensor, low: Tensor, kind: str) -> Tensor:
    if kind == "quadratic_logarithmic":
        barrier = -0.25 / low
    else:
        barrier = (32.0 / 27.0) / (1.0 - low).square()
    return torch.where(above, 1.0 + t, barrier)


def _penalty_barrier_term(c: Tensor, duals: Tensor, penalty: Tensor, kind: str) -> Tensor:
    r""":math:`\sum_i w_i \varphi(c_i/p_i)` with :math:`w = \lambda p`, differentiable in
    :math:`c` only (gradient :math:`\lambda_i \varphi'(c_i/p_i)`). The value and the slope
    are computed without autograd; the graph is ``value + slope . (c - c.detach())``, whose
    second term is exactly 0 (``c`` is finite here): three C++ nodes instead of the dozen of
    the elementwise formula (or a Python autograd.Function's backward), which cost more than
    the rest of the dual step on small models. Later in-place steps of the multipliers and
    penalties do not touch what the graph keeps (its own slope tensor)."""
    with torch.no_grad():
        t = c / penalty
        above, low = _split(t, kind)
        slope = duals * _slope(t, above, low, kind)
        value = torch.dot(duals * penalty, _value(t, above, low, kind))
    zero = c - c.detach()
    return value + torch.dot(slope, zero if zero.dim() else zero.reshape(1))


def annealed(value: float, epoch: int) -> float:
    r""":math:`1 - 1/(\sqrt e + 1/(1 - v))`: equals ``value`` at epoch 0 and tends to 1."""
    if value == 1.0:
        return 1.0
    return 1.0 - 1.0 / (math.sqrt(epoch) + 1.0 / (1.0 - value))


class PBM(DualOptimizer):
    r"""Penalty-barrier multiplier method for inequality constraints :math:`c \le 0`.

    Every constraint :math:`i` has a multiplier :math:`\lambda_i > 0` and a penalty
    :math:`p_i > 0` (``state["penalty"]``); the Lagrangian is

    .. math::

        \mathcal L = f + \sum_i \lambda_i\, p_i\, \varphi(c_i / p_i)

    with :math:`\varphi` the quadratic-logarithmic or quadratic-reciprocal penalty-barrier
    function (``pbf``, :func:`penalty_barrier`). A dual step (``lr`` :math:`= 1 - \gamma` of
    the paper, annealed per epoch :math:`e` when ``anneal_dual``) is multiplicative,

    .. math::

        \gamma_e = 1 - \frac{1}{\sqrt e + 1/\mathrm{lr}}, \qquad
        \lambda \leftarrow \operatorname{clamp}\big(\gamma_e \lambda + (1 - \gamma_e)\,
        \lambda\, \varphi'(c / p),\ l, u\big),

    so multipliers stay positive and grow where :math:`c > 0` (:math:`\varphi' > 1`). Then the
    penalties move by ``penalty_update``, with :math:`K_e` the ``penalty_mult`` :math:`K`
    annealed like :math:`\gamma` when ``anneal_penalty``, :math:`\lambda` the new multipliers
    and :math:`c/p` taken with the previous penalties:

    * ``"const"``: :math:`p` unchanged; ``"dimin"``: :math:`p \leftarrow K_e p`;
    * ``"dimin_dual"``: :math:`p \leftarrow K_e\, p\, \lambda`;
    * ``"dimin_adapt"``: :math:`p \leftarrow K_e p + (1 - K_e)\, p / (d + 10^{-8})` with
      :math:`d = \varphi'(c)` where :math:`\varphi'(c) < 1`, else :math:`\delta \varphi'(c)`
      (``delta``; :math:`\varphi'` at the raw value :math:`c`, as humancompatible-train 0.4.2);
    * ``"aimd"``: additive increase :math:`p \leftarrow p + a` (``aimd_increase``) where
      :math:`c \le 0`, multiplicative decrease :math:`p \leftarrow K_e p` where :math:`c > 0`;
    * ``"alm"``: :math:`p \leftarrow \rho \lambda` (``rho``), the augmented-Lagrangian choice;

    and are clamped to ``penalty_range``. Penalties start at ``init_penalty`` (default: the
    top of ``penalty_range``), multipliers at ``init_duals`` (default 1).

    **Epochs.** :math:`e` is ``state["epoch"]``: with ``epoch_length=n`` it advances after
    every :math:`n`-th dual step; without it, call :meth:`end_epoch` at the end of each epoch
    (nothing else needs the loader's length). Both schedules anneal on their own flags.

    Only inequality groups: write :math:`h = 0` as :math:`|h| - \epsilon \le 0`.

    Example::

        dual = PBM(m=1, lr=0.9, pbf="quadratic_reciprocal", penalty_update="dimin")
        for epoch in range(epochs):
            for x, s, y in loader:
                optimizer.zero_grad()
                dual.forward_update(loss_fn(model(x), y), gap(model(x), s) - 0.05).backward()
                optimizer.step()
            dual.end_epoch()

    Departures from humancompatible-train 0.4.2: no ``epoch_length`` is required; the
    penalty schedule anneals without the dual one; no callable in the state;
    :meth:`forward_update` takes the dual step first and returns the Lagrangian at the new
    :math:`(\lambda, p)` like every dual optimizer here (the peer's uses the previous ones:
    :meth:`forward`, ``backward``, :meth:`step` in that order gives the peer's order).

    References: A. Ben-Tal, M. Zibulevsky, "Penalty/barrier multiplier methods for convex
    programming problems", SIAM J. Optim. 7(2), 1997; A. Kliachkin, J. Lepšová,
    G. Bareilles, J. Mareček, "Benchmarking stochastic approximation algorithms for
    fairness-constrained training of deep neural networks", arXiv 2507.04033, 2025.
    """

    _HYPERPARAMETERS = {**DualOptimizer._HYPERPARAMETERS, "lr": real(low=0.0, high=1.0),
                        "pbf": choice(PENALTY_BARRIERS),
                        "penalty_update": choice(PENALTY_UPDATES),
                        "penalty_mult": real(low=0.0, high=1.0, low_open=True),
                        "delta": real(low=0.0, low_open=True),
                        "rho": real(low=0.0, low_open=True), "aimd_increase": real(low=0.0),
                        "anneal_dual": boolean(), "anneal_penalty": boolean(),
                        "epoch_length": integer(optional=True, minimum=1)}

    def __init__(
        self,
        m: int | None = None,
        lr: float = 0.9,
        *,
        pbf: str = "quadratic_logarithmic",
        penalty_update: str = "dimin_adapt",
        penalty_mult: float = 0.1,
        delta: float = 1.0,
        rho: float = 2.0,
        aimd_increase: float = 0.1,
        penalty_range: tuple[float, float] = (0.1, 1.0),
        init_penalty: float | None = None,
        anneal_dual: bool = True,
        anneal_penalty: bool = True,
        epoch_length: int | None = None,
        init_duals: float | Tensor | Sequence[float] = 1.0,
        dual_range: tuple[float, float] | None = (1e-9, 100.0),
        is_ineq: bool = True,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(lr=lr, pbf=pbf, penalty_update=penalty_update,
                        penalty_mult=penalty_mult, delta=delta, rho=rho,
                        aimd_increase=aimd_increase, penalty_range=tuple(penalty_range),
                        init_penalty=init_penalty, anneal_dual=anneal_dual,
                        anneal_penalty=anneal_penalty, epoch_length=epoch_length)
        super().__init__(m, defaults, init_duals=init_duals, is_ineq=is_ineq,
                         dual_range=dual_range, name=name, device=device, dtype=dtype,
                         process_group=process_group, check_finite=check_finite)

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        w = f"{where}: "
        if group["is_ineq"] is not True:
            raise fail("is_ineq", "True (PBM handles c <= 0; write h = 0 as |h| - eps <= 0)",
                       group["is_ineq"], w)
        super()._validate_group(group, where)
        rng = group["penalty_range"]
        if not (isinstance(rng, (tuple, list)) and len(rng) == 2):
            raise fail("penalty_range", "a pair (low, high) with 0 < low <= high", rng, w)
        lo = check_real("penalty_range[0]", rng[0], low=0.0, low_open=True, where=w)
        check_real("penalty_range[1]", rng[1], low=lo, where=w)
        if group["init_penalty"] is not None:
            check_real("init_penalty", group["init_penalty"], low=rng[0], high=rng[1], where=w)

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        p0 = group["penalty_range"][1] if group["init_penalty"] is None else group["init_penalty"]
        penalty = torch.full((group["m"],), float(p0), device=self._device, dtype=self._dtype)
        return {"step": 0, "penalty": penalty, "epoch": 0}

    def _validate_state(self, group: dict[str, Any], state: dict[str, Any], where: str) -> None:
        lo, hi = group["penalty_range"]
        penalty = state["penalty"]
        if bool(((penalty < lo) | (penalty > hi)).any()):
            raise fail("penalty", f"values in penalty_range [{lo}, {hi}]", penalty.tolist(),
                       f"{where}: state: ")

    @property
    def penalties(self) -> Tensor:
        """All penalties :math:`p` as one flat tensor (a copy), in registration order."""
        return torch.cat([self.state[g["params"][0]]["penalty"] for g in self.param_groups])

    def end_epoch(self) -> None:
        """Advance the epoch :math:`e` of every group (for groups without ``epoch_length``)."""
        timed = [g["name"] for g in self.param_groups if g["epoch_length"] is not None]
        if timed:
            raise ValueError(f"end_epoch: groups {timed} count their epochs by epoch_length; "
                             "expected epoch_length=None for every group")
        for g in self.param_groups:
            self.state[g["params"][0]]["epoch"] += 1

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        duals, penalty, epoch = group["params"][0], state["penalty"], state["epoch"]
        kind, lr = group["pbf"], group["lr"]
        gamma = annealed(1.0 - lr, epoch) if group["anneal_dual"] and lr > 0 else 1.0 - lr
        ratio = c / penalty  # with the penalties before this step's update
        rule = group["penalty_update"]
        if rule == "dimin_adapt":
            # phi'(c / p) and phi'(c) in one pass over both.
            m = ratio.shape[0]
            both = penalty_barrier_derivative(
                torch.cat([ratio, c if c.dim() == 1 else c.reshape(-1)]), kind)
            grown, d = both[:m].mul_(duals), both[m:]  # grown: before duals change
        else:
            grown = penalty_barrier_derivative(ratio, kind).mul_(duals)
        duals.mul_(gamma).add_(grown, alpha=1.0 - gamma)
        self._clamp(group, duals)
        k = group["penalty_mult"]
        if group["anneal_penalty"]:
            k = annealed(k, epoch)
        if rule == "dimin":
            penalty.mul_(k)
        elif rule == "dimin_dual":
            penalty.mul_(k).mul_(duals)
        elif rule == "dimin_adapt":
            if group["delta"] != 1.0:  # delta = 1 leaves d as it is
                d = torch.where(d < 1.0, d, group["delta"] * d)
            # k p + (1 - k) p / (d + 1e-8), all from the penalties before this update, in one
            # addcdiv (the same roundings as the three separate operations).
            torch.addcdiv(penalty * k, penalty * (1.0 - k), d + 1e-8, out=penalty)
        elif rule == "aimd":
            penalty.add_((ratio <= 0).to(penalty.dtype), alpha=group["aimd_increase"])
            penalty.copy_(torch.where(ratio > 0, penalty * k, penalty))
        elif rule == "alm":
            penalty.copy_(duals).mul_(group["rho"])
        penalty.clamp_(*group["penalty_range"])
        length = group["epoch_length"]
        if length is not None and (state["step"] + 1) % length == 0:
            state["epoch"] += 1

    def _lagrangian_term(self, group: dict[str, Any], duals: Tensor, c: Tensor) -> Tensor:
        penalty = self.state[group["params"][0]]["penalty"]
        return _penalty_barrier_term(c, duals, penalty, group["pbf"])
