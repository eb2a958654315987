r"""nuPI: proportional-integral control of the Lagrange multipliers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import choice, real
from .base import DualOptimizer

__all__ = ["nuPI"]

# The moving average's value before the first step: the first value, or 0.
INIT_XI = ("first", "zero")


def nupi_step(duals: Tensor, xi: Tensor, started: Tensor, c: Tensor, *, lr: float,
              kappa_p: float, kappa_i: float, nu: float) -> None:
    r"""One unprojected nuPI step, in place: ``xi`` becomes :math:`\xi_t`, ``duals`` moves by
    :math:`\eta(\kappa_i c_t + \kappa_p(\xi_t - \xi_{t-1}))`; entries not ``started`` take
    :math:`\xi_{t-1} = c_t` (the filter starts at its first value)."""
    previous = torch.where(started, xi, c)
    torch.mul(previous, nu, out=xi).add_(c, alpha=1.0 - nu)
    duals.add_(c, alpha=lr * kappa_i)
    if kappa_p != 0.0:
        duals.add_(xi - previous, alpha=lr * kappa_p)
    started.fill_(True)


class nuPI(DualOptimizer):  # noqa: N801 - the name Cooper and humancompatible-train use
    r"""ν-PI control of the multipliers (Sohrabi et al., ICML 2024).

    Dual ascent :math:`\lambda \leftarrow \lambda + \eta c` is an *integral* controller: the
    multiplier integrates the constraint error, so it keeps pushing after the model has
    crossed into feasibility and the constraint overshoots and oscillates. νPI adds a
    *proportional* term on an exponential moving average :math:`\xi` of the error, which
    reacts at once to a change of violation and damps that oscillation.

    **Dual step** (per group: constraint values :math:`c_t`, step :math:`\eta` = ``lr``,
    gains :math:`\kappa_p` = ``kappa_p``, :math:`\kappa_i` = ``kappa_i``, EMA coefficient
    :math:`\nu` = ``nu``; :math:`t = 0, 1, \dots` counts the group's steps):

    .. math::

        \xi_t = \nu\, \xi_{t-1} + (1 - \nu)\, c_t, \qquad
        \lambda_{t+1} = \operatorname{clamp}\big(\lambda_t + \eta\,[\kappa_i c_t
            + \kappa_p (\xi_t - \xi_{t-1})],\ l, u\big)

    **Initial state** (``init_xi``): with ``"first"`` (the default) :math:`\xi_{-1} = c_0`,
    i.e. the moving average starts at the first constraint value, so :math:`\xi_0 = c_0` and
    the first step is plain dual ascent, :math:`\lambda_1 = \lambda_0 + \eta\kappa_i c_0`
    (Cooper's ``nuPIInitType.SGD`` as its documentation states it; Cooper 1.0.1 stores
    :math:`\xi_0 = 0` after that step, so its later steps differ); with ``"zero"``
    :math:`\xi_{-1} = 0`, so :math:`\xi_0 = (1-\nu)c_0` and the first step is
    :math:`\eta(\kappa_i + \kappa_p(1-\nu))c_0` (Cooper's ``nuPIInitType.ZEROS``).
    humancompatible-train 0.4.2 starts its average at 0 but leaves the proportional term out
    of its first step: while no clamp acts, it is ``"zero"`` shifted by that first step's
    :math:`-\eta\kappa_p(1-\nu)c_0`. ``init_xi`` is read when the group's state is
    created (at construction or :meth:`add_constraint_group`), like ``torch.optim.Adagrad``'s
    ``initial_accumulator_value``. While no clamp is active the update sums to the PI law

    .. math::

        \lambda_{t+1} = \lambda_0 + \eta\Big[\kappa_i \sum_{\tau=0}^{t} c_\tau
            + \kappa_p (\xi_t - \xi_{-1})\Big].

    The clamp acts on every step (no integral wind-up while a multiplier sits at 0). With
    ``"first"``, each entry's average starts at its own first *finite* value when
    ``check_finite=False`` masks entries out. The Lagrangian is :math:`f + \lambda^\top c`.

    **Reductions**: ``kappa_p=0`` is :class:`~humancompatible_train.dual_optim.ALM` with
    step :math:`\eta\kappa_i` (plain projected dual ascent); ``nu=0, kappa_p=kappa_i`` is
    the optimistic gradient step :math:`\lambda_{t+1} = \lambda_t + \eta\kappa_i(2c_t -
    c_{t-1})` (Popov 1980).

    Learning-rate schedulers scale :math:`\eta`, hence both gains together. The defaults
    (:math:`\eta = 0.1`, :math:`\kappa_p = 10`, :math:`\kappa_i = 1`, :math:`\nu = 0.9`) are
    a damped controller for constraint values of a few hundredths, such as fairness gaps;
    see ``docs/satisfaction.md`` for the measurements.

    Example::

        dual = nuPI(m=2, is_ineq=True)
        lagrangian = dual.forward_update(loss, rows)   # rows <= 0 wanted
        lagrangian.backward(); optimizer.step()

    Reference: M. Sohrabi, J. Ramirez, T. H. Zhang, S. Lacoste-Julien, J. Gallego-Posada,
    "On PI controllers for updating Lagrange multipliers in constrained optimization",
    ICML 2024 (arXiv 2406.04558).
    """

    _HYPERPARAMETERS = {**DualOptimizer._HYPERPARAMETERS, "kappa_p": real(low=0.0),
                        "kappa_i": real(low=0.0), "nu": real(low=0.0, high=1.0, high_open=True),
                        "init_xi": choice(INIT_XI)}

    def __init__(
        self,
        m: int | None = None,
        lr: float = 0.1,
        *,
        kappa_p: float = 10.0,
        kappa_i: float = 1.0,
        nu: float = 0.9,
        init_xi: str = "first",
        init_duals: float | Tensor | Sequence[float] = 0.0,
        dual_range: tuple[float, float] | None = None,
        is_ineq: bool = False,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(
            m,
            dict(lr=lr, kappa_p=kappa_p, kappa_i=kappa_i, nu=nu, init_xi=init_xi),
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
        return self._controller_state(group["m"], started=group["init_xi"] == "zero")

    def _controller_state(self, m: int, *, started: bool) -> dict[str, Any]:
        # An entry marked started takes its stored xi (0 here) as xi_{-1}; one not started
        # takes its first value instead.
        return {
            "step": 0,
            "xi": torch.zeros(m, device=self._device, dtype=self._dtype),
            "started": torch.full((m,), started, device=self._device, dtype=torch.bool),
        }

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        duals = group["params"][0]
        nupi_step(duals, state["xi"], state["started"], c, lr=group["lr"],
                  kappa_p=group["kappa_p"], kappa_i=group["kappa_i"], nu=group["nu"])
        self._clamp(group, duals)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The base class casts saved state tensors to the multipliers' dtype; the mask of
        # started averages must stay boolean for torch.where.
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            state = self.state[group["params"][0]]
            if "started" in state:
                state["started"] = state["started"].to(torch.bool)
