r"""Switching subgradient method (SSG): descend the loss when feasible, else a constraint."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._validation import fail, real
from .base import DualOptimizer

__all__ = ["SSG"]


class SSG(DualOptimizer):
    r"""Switching subgradient method of Polyak (1967), in the single-loop stochastic form of
    Huang & Lin (2023).

    Each step decides, from the constraint values :math:`c`, what the primal step descends.
    With the *excess* :math:`e_i = c_i - \tau_g` of constraint :math:`i` of group :math:`g`
    (:math:`|c_i| - \tau_g` for equality groups; :math:`\tau_g` = ``tol``) and
    :math:`i^* = \arg\max_i e_i` over all groups (the first on ties), the primal step
    descends

    .. math::

        \begin{cases}
            \eta_{g^*}\, c_{i^*} & \text{if } e_{i^*} > 0 \text{ and } i^* \text{ is an
            inequality,} \\
            \eta_{g^*}\, \tfrac12 c_{i^*}^2 & \text{if } e_{i^*} > 0 \text{ and } i^*
            \text{ is an equality,} \\
            f & \text{otherwise,}
        \end{cases}

    with :math:`\eta` = ``lr`` the group's weight of the constraint step against the loss
    step (the ratio of the paper's two step sizes; exact for SGD, while adaptive optimizers
    such as Adam normalise it away). An equality :math:`h = 0` is the constraint
    :math:`\tfrac12 h^2 \le \tfrac12\tau^2`: its step shrinks with :math:`|h|`, so the
    iterate settles within ``tol`` of the manifold instead of bouncing across it (choose
    ``tol > 0`` for equality groups: with 0 the loss is never descended).

    It is written as a Lagrangian with switching multipliers,
    :math:`\mathcal L = (1 - \sigma) f + \lambda^\top c` with :math:`\sigma = [e_{i^*} > 0]`
    and :math:`\lambda` zero except :math:`\lambda_{i^*} = \sigma \eta_{g^*}` (inequality) or
    :math:`\sigma \eta_{g^*} c_{i^*}` (equality): the multipliers say which constraint the
    step descends (the gradient is exactly the one above; the value of :math:`\mathcal L` for
    an equality is :math:`\eta h^2`). The switch :math:`\sigma` is in the state
    (``state["on_constraints"]``, a 0-d bool tensor, the same in every group) and readable
    as :attr:`on_constraints`. The decision is a tensor operation (no host read); under a
    ``process_group`` it is taken on the averaged values, so every replica takes the same
    branch, and each differentiates its local :math:`c_{i^*}`.

    Example::

        dual = SSG(m=1, tol=0.0, is_ineq=True)
        for x, s, y in loader:
            optimizer.zero_grad()
            dual.forward_update(loss_fn(model(x), y), gap(model(x), s) - 0.05).backward()
            optimizer.step()
            switched.append(dual.on_constraints)  # a tensor; bool() reads it

    References: B. T. Polyak, "A general method for solving extremal problems", Soviet Math.
    Doklady 8, 1967; Y. Huang, Q. Lin, "Oracle complexity of single-loop switching subgradient
    methods for non-smooth weakly convex functional constrained optimization", NeurIPS 2023
    (arXiv 2301.13314).
    """

    _HYPERPARAMETERS = {**DualOptimizer._HYPERPARAMETERS, "tol": real()}

    def __init__(
        self,
        m: int | None = None,
        lr: float = 1.0,
        *,
        tol: float = 0.0,
        is_ineq: bool = True,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__(m, dict(lr=lr, tol=tol), is_ineq=is_ineq, name=name, device=device,
                         dtype=dtype, process_group=process_group, check_finite=check_finite)

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": 0,
                "on_constraints": torch.zeros((), device=self._device, dtype=torch.bool)}

    def _validate_state(self, group: dict[str, Any], state: dict[str, Any], where: str) -> None:
        if state["on_constraints"].dtype != torch.bool:
            raise fail("on_constraints", "a bool tensor", state["on_constraints"].dtype,
                       f"{where}: state: ")

    @property
    def on_constraints(self) -> Tensor:
        """Whether the last step descends a constraint (0-d bool tensor, a copy)."""
        return self.state[self.param_groups[0]["params"][0]]["on_constraints"].clone()

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        self._candidate(group, state, c, None)

    def _masked_dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        valid = torch.isfinite(c)
        self._candidate(group, state, torch.where(valid, c, 0.0), valid)

    def _candidate(self, group: dict[str, Any], state: dict[str, Any], c: Tensor,
                   valid: Tensor | None) -> None:
        """The group's worst excess and its signed, weighted unit vector; with several groups
        they are kept until the last group, where the switch is decided (the base class
        steps the groups in order within one call, so nothing of it outlives the call)."""
        if c.dim() != 1:
            c = c.reshape(-1)
        tol = group["tol"]
        excess = c if group["is_ineq"] else c.abs()
        if tol != 0:  # c - 0 is c
            excess = excess - tol
        if valid is not None:
            excess = torch.where(valid, excess, -torch.inf)
        duals = group["params"][0]
        groups = self.param_groups
        if len(groups) == 1 and group["m"] == 1:
            # One constraint: it is the worst; lambda = on * lr (times c for an equality),
            # the same products as below in fewer operations.
            on = excess > 0
            duals.copy_(on if group["is_ineq"] else c).mul_(group["lr"])
            if not group["is_ineq"]:
                duals.mul_(on)
            state["on_constraints"].copy_(on.view(()))
            return
        top, worst = excess.max(0)  # the first maximum on ties, as argmax
        if len(groups) == 1 and group["is_ineq"]:
            # lr at the worst constraint, times the switch: lr * 1 or 0, as below.
            on = top > 0
            duals.zero_().index_fill_(0, worst, group["lr"]).mul_(on)
            state["on_constraints"].copy_(on)
            return
        worst = worst.view(1)
        if group["is_ineq"]:
            pull = torch.full((1,), group["lr"], dtype=c.dtype, device=c.device)
        else:
            # An equality descends 1/2 h^2 (gradient h grad h): the step shrinks with |h|,
            # so |h| settles below tol instead of bouncing across the manifold.
            pull = c.gather(0, worst) * group["lr"]
        if len(groups) == 1:
            on = top > 0
            duals.zero_().index_put_((worst,), pull * on)
            state["on_constraints"].copy_(on)
            return
        duals.zero_().index_put_((worst,), pull)
        if group is groups[0]:
            self._excess = []
        self._excess.append(top)
        if group is groups[-1]:
            excesses = torch.stack(self._excess)
            winner, on = excesses.argmax(), excesses.max() > 0
            for i, g in enumerate(groups):
                g["params"][0].mul_(on & (winner == i))
                self.state[g["params"][0]]["on_constraints"].copy_(on)
            self._excess = []

    def _objective(self, loss: Tensor) -> Tensor:
        # (1 - sigma) f: the loss drops out of the step while a constraint is descended.
        on = self.state[self.param_groups[0]["params"][0]]["on_constraints"]
        return loss * torch.logical_not(on)  # a bool factor: 1 or 0 in the loss's dtype
