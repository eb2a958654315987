r"""Augmented Lagrangian method (ALM) with optional dual momentum and restarts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import boolean, choice, fail, real
from .base import DualOptimizer, linear_term

__all__ = ["ALM"]

_AUGMENTATIONS = (None, "quadratic", "hpr")


class ALM(DualOptimizer):
    r"""Augmented Lagrangian method: projected dual ascent on the constraint values.

    **Dual step** (per group, constraint values :math:`c`, step size :math:`\eta` = ``lr``,
    momentum :math:`\mu`, dampening :math:`\delta`; the buffer starts at :math:`b_0 = 0`):

    .. math::

        b_{t+1} = \mu\, b_t + (1 - \delta)\, c_t, \qquad
        \lambda_{t+1} = \operatorname{clamp}\big(\lambda_t + \eta\, b_{t+1},\ l, u\big)

    where :math:`[l, u]` is ``dual_range`` with :math:`l \ge 0` for inequality groups. With
    ``momentum=0`` (default) :math:`b_{t+1} = (1-\delta) c_t`, and ``dampening=None`` means
    :math:`\delta = 0` as in :class:`torch.optim.SGD`, so the step is plain dual ascent
    :math:`\lambda \leftarrow [\lambda + \eta c]`. With ``restart=True`` (inequality groups
    only), :math:`\lambda_i` is reset to 0 whenever :math:`c_i < 0`, so a satisfied constraint
    stops pulling at once (the dual restarts of arXiv 2504.07607).

    Departure from :class:`torch.optim.SGD`: SGD starts its buffer at the first gradient
    (:math:`b_1 = c_0`, no dampening on step 1); here :math:`b_0 = 0`, so with dampening the
    first step is :math:`b_1 = (1-\delta) c_0`, and every step has the same form.

    The momentum is stored in each param group under ``"dual_momentum"`` (the constructor
    and :meth:`add_constraint_group` take it as ``momentum``), so that
    :class:`~torch.optim.lr_scheduler.OneCycleLR` and
    :class:`~torch.optim.lr_scheduler.CyclicLR` do not cycle it: with their default
    ``cycle_momentum=True`` they refuse this optimizer; pass ``cycle_momentum=False``.

    **Lagrangian** :math:`f + \sum_g \ell_g`, by ``augmentation`` with penalty :math:`\rho`:

    * ``None``: :math:`\ell = \lambda^\top c` (with ``penalty > 0``: as ``"quadratic"``);
    * ``"quadratic"``: :math:`\ell = \lambda^\top c + \tfrac{\rho}{2}\|c\|^2` for equality
      groups and :math:`\lambda^\top c + \tfrac{\rho}{2}\|[c]_+\|^2` for inequality groups;
    * ``"hpr"`` (Hestenes, JOTA 1969; Powell, in *Optimization*, Academic Press 1969;
      Rockafellar, Math. Programming 1973): for inequality groups
      :math:`\ell = \tfrac{1}{2\rho}\big(\|[\lambda + \rho c]_+\|^2 - \|\lambda\|^2\big)`,
      which is :math:`\lambda^\top c + \tfrac{\rho}{2}\|c\|^2` where :math:`\lambda+\rho c>0`
      and :math:`-\|\lambda\|^2/2\rho` elsewhere; for equality groups it coincides with
      ``"quadratic"``.

    The augmentation is read from the group at every use, so a penalty set later (by hand or
    by a checkpoint) takes effect; a named augmentation needs ``penalty > 0``.

    The default step ``lr=0.1`` is the best single dual step measured for fairness rows of a
    few hundredths on batches of 64 to 1024 (``benchmarks/fairness_tradeoff.py``; the former
    default, 0.01, does not reach the multiplier's optimum within ten epochs there).
    :class:`~humancompatible_train.dual_optim.AdaptiveDual` needs no step at all.

    Example (humancompatible-train's basic-usage example)::

        dual = ALM(m=1, lr=0.01, is_ineq=True)
        for x, s, y in loader:
            optimizer.zero_grad()
            logit = model(x)
            lagr = dual.forward_update(criterion(logit, y), pr_diff(logit, s) - 0.05)
            lagr.backward()
            optimizer.step()

    References: Bertsekas, *Constrained Optimization and Lagrange Multiplier Methods*,
    Academic Press (1982); Arrow, Hurwicz & Uzawa, *Studies in Linear and Non-linear
    Programming*, Stanford University Press (1958) for the gradient descent--ascent loop;
    the humancompatible-train toolkit, arXiv 2504.07607 (2025), for dual momentum and restarts.
    """

    _ALIASES = {"momentum": "dual_momentum"}

    _HYPERPARAMETERS = {**DualOptimizer._HYPERPARAMETERS, "penalty": real(low=0.0),
                        "augmentation": choice(_AUGMENTATIONS),
                        "dual_momentum": real(label="momentum (group key 'dual_momentum')",
                                              low=0.0, high=1.0, high_open=True),
                        "dampening": real(optional=True, low=0.0, high=1.0),
                        "restart": boolean()}

    def __init__(
        self,
        m: int | None = None,
        lr: float = 0.1,
        *,
        init_duals: float | Tensor | Sequence[float] = 0.0,
        penalty: float = 0.0,
        augmentation: str | None = None,
        momentum: float = 0.0,
        dampening: float | None = None,
        dual_range: tuple[float, float] | None = None,
        is_ineq: bool = False,
        restart: bool = False,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            penalty=penalty,
            augmentation=augmentation,
            dual_momentum=momentum,
            dampening=dampening,
            restart=restart,
        )
        super().__init__(
            m,
            defaults,
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
        at = f"{where}: "
        aug = group["augmentation"]
        if aug is not None and group["penalty"] == 0:
            raise fail("penalty", f"a number > 0 with augmentation={aug!r} "
                       "(augmentation=None gives the plain Lagrangian)", group["penalty"], at)
        if group["restart"] and not group["is_ineq"]:
            raise ValueError(
                f"{at}restart: expected False for an equality group (restart=True zeroes "
                "multipliers of satisfied inequality constraints and needs is_ineq=True), "
                "got True"
            )

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        buf = torch.zeros(group["m"], device=self._device, dtype=self._dtype)
        return {"step": 0, "momentum_buffer": buf}

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        duals = group["params"][0]
        damp = group["dampening"] or 0.0
        lr = group["lr"]
        momentum = group["dual_momentum"]
        if momentum == 0.0:
            # b = (1 - delta) c: fold the factor into the step size, no buffer arithmetic.
            step, lr = c, lr * (1.0 - damp)
        else:
            step = state["momentum_buffer"].mul_(momentum).add_(c, alpha=1.0 - damp)
        self._clamp(group, duals.add_(step, alpha=lr))
        if group["restart"]:
            duals.masked_fill_(c < 0, 0.0)

    def _lagrangian_term(self, group: dict[str, Any], duals: Tensor, c: Tensor) -> Tensor:
        aug, rho = group["augmentation"], group["penalty"]
        if aug is None:
            if rho == 0:
                return linear_term(duals, c)
            aug = "quadratic"
        if aug == "hpr" and group["is_ineq"]:
            shifted = torch.relu(duals + rho * c)
            return (shifted.square().sum() - duals.square().sum()) / (2.0 * rho)
        linear = linear_term(duals, c)
        violation = torch.relu(c) if group["is_ineq"] else c
        return linear + 0.5 * rho * violation.square().sum()

    def _zero_step_is_identity(self, group: dict[str, Any]) -> bool:
        # Without momentum, c = 0 gives clamp(lambda + 0) = lambda and no restart.
        return group["dual_momentum"] == 0.0
