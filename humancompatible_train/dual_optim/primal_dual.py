r"""Online primal-dual method with a decaying dual step."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_real, fail
from .base import DualOptimizer

__all__ = ["PrimalDual"]

Decay = str | Callable[[int], float]
_DECAYS = ("sqrt", "constant")


class PrimalDual(DualOptimizer):
    r"""Projected online dual ascent with step :math:`\eta_t = \eta_0/\sqrt{t}`.

    At the :math:`t`-th dual step (:math:`t = 1, 2, \dots`, counted in the state):

    .. math::

        \lambda_{t} = \operatorname{clamp}\big(\lambda_{t-1} + \eta_t\, c_t,\ l, u\big),
        \qquad \eta_t = \begin{cases}
            \eta_0 / \sqrt{t} & \text{decay} = \texttt{"sqrt"} \\
            \eta_0 & \text{decay} = \texttt{"constant"} \\
            \texttt{decay}(t) & \text{decay callable}
        \end{cases}

    and the Lagrangian is :math:`f + \lambda^\top c`. ``eta_0`` is stored as the group's
    ``"lr"``, so learning-rate schedulers scale :math:`\eta_0` (not a callable ``decay``).

    The :math:`1/\sqrt{t}` step gives the :math:`O(1/\sqrt{T})` regret of online gradient
    ascent on the dual (Zinkevich, ICML 2003), from which the average constraint violation of
    the primal iterates is bounded by :math:`\lambda_{\max} / (\eta_T T)` (Mahdavi, Jin & Yang,
    JMLR 2012). It is the training-time twin of the streaming primal-dual correction of the
    fairness_training small-batch streaming example and inference guide; the inference wrapper
    reuses its state.

    ``eta_0`` must be a finite number >= 0, and a callable ``decay`` must return one: its value
    is checked at every step before any multiplier changes (the callable is called once per
    group and step, with :math:`t`).
    """

    def __init__(
        self,
        m: int | None = None,
        eta_0: float = 0.5,
        *,
        decay: Decay = "sqrt",
        is_ineq: bool = False,
        dual_range: tuple[float, float] | None = None,
        init_duals: float | Tensor | Sequence[float] = 0.0,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        # eta_t of a callable decay, computed and checked by _prepare_step for _dual_step.
        self._callable_eta: dict[int, float] = {}
        super().__init__(
            m,
            dict(lr=eta_0, decay=decay),
            init_duals=init_duals,
            is_ineq=is_ineq,
            dual_range=dual_range,
            name=name,
            device=device,
            dtype=dtype,
            process_group=process_group,
            check_finite=check_finite,
        )

    def _validate_group(self, group: dict[str, Any], where: str) -> None:
        super()._validate_group(group, where)
        decay = group["decay"]
        if not callable(decay) and not (isinstance(decay, str) and decay in _DECAYS):
            raise fail("decay", f"one of {_DECAYS} or a callable t -> eta_t", decay, f"{where}: ")

    def step_size(self, group: dict[str, Any], t: int) -> float:
        """:math:`\\eta_t` of ``group`` at dual step ``t`` (1-based)."""
        decay = group["decay"]
        if callable(decay):
            return float(decay(t))
        if decay == "sqrt":
            return group["lr"] / math.sqrt(t)
        return float(group["lr"])

    def _prepare_step(self, group: dict[str, Any], state: dict[str, Any]) -> None:
        decay = group["decay"]
        if callable(decay):
            t = state["step"] + 1
            self._callable_eta[id(group)] = check_real(
                f"decay({t})", decay(t), low=0.0,
                where=f"constraint group {group['name']!r}: the step size ")

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        eta = None
        if callable(group["decay"]):
            eta = self._callable_eta.pop(id(group), None)
        if eta is None:
            eta = self.step_size(group, state["step"] + 1)
        self._clamp(group, group["params"][0].add_(c, alpha=eta))

    def _zero_step_is_identity(self, group: dict[str, Any]) -> bool:
        return True
