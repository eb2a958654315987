r"""AdaptiveDual: dual ascent whose step is measured in units of the constraints' own noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import real
from .base import DualOptimizer
from .nupi import nuPI, nupi_step

__all__ = ["AdaptiveDual"]


def standardize(c: Tensor, prev: Tensor, noise: Tensor, weight: Tensor, started: Tensor, *,
                beta: float, clip: float) -> Tensor:
    r"""Update the noise estimate in place and return :math:`z_t`, clipped to
    :math:`[-\text{clip}, \text{clip}]`; ``prev`` becomes ``c``."""
    # Half the squared successive difference estimates the batch-to-batch variance and is
    # insensitive to the slow drift of the mean; the very first value counts in full.
    d2 = torch.where(started, (c - prev).square().mul_(0.5), c.square())
    noise.mul_(beta).add_(d2, alpha=1.0 - beta)
    weight.mul_(beta).add_(1.0 - beta)
    scale = (noise / weight).sqrt_()
    # A positive scale is at least the square root of the smallest subnormal, far above the
    # smallest normal number, so it needs no floor; where it is 0 the division's inf/NaN is
    # dropped (and an overflowing quotient clips to +-clip below).
    z = torch.where(scale > 0, c / scale, 0.0)
    prev.copy_(c)
    return z.clamp_(-clip, clip)


class AdaptiveDual(nuPI):
    r"""Dual ascent with a step in units of each constraint's noise: the default to use.

    The step a plain dual ascent needs depends on the data: on batches of 64 the constraint
    values of a fairness gap jitter by several hundredths from batch to batch, and a step
    that moves the multiplier quickly enough on batches of 1024 makes it wander by a third of
    its value; a step quiet enough for batches of 64 has not converged after ten epochs on
    batches of 1024. Here each constraint's value is divided by a running estimate of its own
    batch-to-batch noise before the step, so the multiplier moves by about :math:`\eta` per
    standard deviation of evidence: the effective step grows with the square root of the
    batch size, as the gain of a Kalman filter tracking a slowly moving level does, and
    stays within 10 % of the multiplier's value on every batch size measured
    (``docs/satisfaction.md``).

    **Dual step** (per group and constraint; :math:`\beta` = ``beta``, :math:`\eta` = ``lr``):

    .. math::

        v_t = \beta v_{t-1} + (1-\beta)\,\tfrac12 (c_t - c_{t-1})^2, \qquad
        z_t = \operatorname{clip}\Big(\frac{c_t}{\sqrt{v_t / (1 - \beta^{t+1})}},
            -z_{\max}, z_{\max}\Big) + \kappa,

    then the νPI step of :class:`nuPI` on :math:`z_t` in place of :math:`c_t`: with
    :math:`\xi_t = \nu\xi_{t-1} + (1-\nu) z_t` (:math:`\xi_{-1} = z_0`),
    :math:`\lambda_{t+1} = \operatorname{clamp}(\lambda_t + \eta[\kappa_i z_t +
    \kappa_p(\xi_t - \xi_{t-1})], l, u)` (``kappa_p=0``: plain ascent on :math:`z_t`, the
    former default). The first value enters :math:`v` as :math:`c_0^2`
    (so :math:`z_0 = \pm 1`). Half the squared successive difference (von Neumann's mean
    square successive difference) estimates the noise variance without the drift of the
    mean, so a persistent violation is not mistaken for noise. The clip :math:`z_{\max}`
    = ``clip`` bounds the step on deterministic constraints (full batches), where the
    estimated noise vanishes: the multiplier then moves by at most :math:`\eta z_{\max}` a
    step and settles within that distance of its optimum. :math:`\kappa` = ``offset`` shifts
    the target of an inequality group: the multiplier settles where the mean constraint
    value is :math:`-\kappa` noise standard deviations, a margin that grows with the noise of
    the batches, as the last iterate's wander around the target does (``offset=0``: aim at
    the constraint itself). Equality groups always aim at :math:`h = 0` (:math:`\kappa = 0`
    there): an equality has no safe side for a margin, and an offset would only bias it.

    The proportional term damps the overshoot of the integral one where the constraint moves
    faster than the multiplier can follow (large batches, few steps: the multiplier rises at
    most :math:`\eta z_{\max}` a step): on the benchmark grid it removed two of the three runs
    whose last iterate missed ε and the accuracy shortfall on batches of 1024, while adding
    a jitter of :math:`\eta\kappa_p|\xi_t - \xi_{t-1}|` (under 1 % of the multiplier a step
    on batches of 64).

    The Lagrangian is :math:`f + \lambda^\top c` (the raw values: the standardisation acts on
    the dual step only). Defaults: :math:`\eta = 0.003`, :math:`\beta = 0.99`,
    :math:`z_{\max} = 3`, :math:`\kappa = 0.15`, :math:`\kappa_p = 10`, :math:`\kappa_i = 1`,
    :math:`\nu = 0.9`: measured on demographic
    parity (rows of a few hundredths, batches of 64 to 1024; ``docs/satisfaction.md``). The
    multiplier's scale is that of the loss per unit of constraint: for a loss of order 1 and
    constraints that are rates (fairness statistics), the defaults hold; for constraints in
    other units, scale :math:`\eta` with the expected multiplier.

    Reference: the standardised step is this library's; the PI form is Sohrabi, Ramirez,
    Zhang, Lacoste-Julien & Gallego-Posada, ICML 2024; the noise estimate is von Neumann,
    Kent, Bellinson & Hart, Ann. Math. Statist. 1941.

    Example::

        dual = AdaptiveDual(m=2, is_ineq=True)            # nothing to tune
        lagrangian = dual.forward_update(loss, rows)      # rows <= 0 wanted
    """

    # The average starts at the first standardised value, as the noise estimate does at the
    # first value (both read ``started``): no init_xi here.
    _HYPERPARAMETERS = {**{k: r for k, r in nuPI._HYPERPARAMETERS.items() if k != "init_xi"},
                        "beta": real(low=0.0, high=1.0, high_open=True),
                        "clip": real(low=0.0, low_open=True), "offset": real()}

    def __init__(
        self,
        m: int | None = None,
        lr: float = 0.003,
        *,
        beta: float = 0.99,
        clip: float = 3.0,
        offset: float = 0.15,
        kappa_p: float = 10.0,
        kappa_i: float = 1.0,
        nu: float = 0.9,
        init_duals: float | Tensor | Sequence[float] = 0.0,
        dual_range: tuple[float, float] | None = None,
        is_ineq: bool = False,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        DualOptimizer.__init__(
            self,
            m,
            dict(lr=lr, kappa_p=kappa_p, kappa_i=kappa_i, nu=nu, beta=beta, clip=clip,
                 offset=offset),
            init_duals=init_duals,
            is_ineq=is_ineq,
            dual_range=dual_range,
            name=name,
            device=device,
            dtype=dtype,
            process_group=process_group,
            check_finite=check_finite,
        )

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        m = group["m"]
        state = self._controller_state(m, started=False)
        zeros = torch.zeros(m, device=self._device, dtype=self._dtype)
        state.update(prev=zeros.clone(), noise=zeros.clone(), weight=zeros.clone())
        return state

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        # ``started`` is still False on an entry's first step here; nupi_step sets it.
        z = standardize(c, state["prev"], state["noise"], state["weight"], state["started"],
                        beta=group["beta"], clip=group["clip"])
        if group["offset"] != 0.0 and group["is_ineq"]:
            z.add_(group["offset"])
        duals = group["params"][0]
        nupi_step(duals, state["xi"], state["started"], z, lr=group["lr"],
                  kappa_p=group["kappa_p"], kappa_i=group["kappa_i"], nu=group["nu"])
        self._clamp(group, duals)
