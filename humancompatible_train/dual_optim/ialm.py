r"""Inexact augmented Lagrangian method with a capped dual step and a growing penalty."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import choice, fail, integer, real
from .alm import ALM
from .base import DualOptimizer

__all__ = ["iALM"]

_AUGMENTATIONS = ("quadratic", "hpr")


class iALM(DualOptimizer):  # noqa: N801 -- the method's name, as users of the peers know it
    r"""Inexact augmented Lagrangian method (iALM) of Li et al. (2021).

    The training loop is the inner solver: an *outer iteration* :math:`k` is ``inner_steps``
    consecutive calls of :meth:`step` / :meth:`forward_update`, during which :math:`\lambda`
    and :math:`\beta` stay fixed and the primal optimizer minimises the augmented Lagrangian
    :math:`\mathcal L_{\beta_k}(\theta, \lambda_k)`. The last call of an outer iteration takes
    the dual step from its constraint values :math:`c` and grows the penalty:

    .. math::

        w_k = \min\Big(\beta_k,\ \frac{\gamma}{\|c\|_2}\Big), \qquad
        \lambda_{k+1} = \operatorname{clamp}\big(\lambda_k + w_k\, c,\ l, u\big), \qquad
        \beta_k = \min\big(\beta_0\, \sigma^{k},\ \beta_{\max}\big)

    with :math:`\beta_0` = ``lr`` (the group's dual step, on which learning-rate schedulers
    act), :math:`\sigma` = ``sigma`` :math:`\ge 1`, :math:`\gamma` = ``gamma`` (the largest
    dual move :math:`\|\lambda_{k+1} - \lambda_k\|` per outer iteration, ``math.inf`` for
    none) and :math:`[l, u]` the ``dual_range`` (:math:`l \ge 0` for inequality groups).
    :math:`\|c\| = 0` gives :math:`w_k = \beta_k`. The schedule is explicit: :math:`k` is the
    number of finished outer iterations, kept in the state (``state["outer"]``), so
    :math:`\beta` grows once per outer iteration, never per call -- unless ``inner_steps=1``,
    where every call is an outer iteration.

    **Lagrangian**: :class:`~humancompatible_train.dual_optim.ALM`'s augmentation with
    penalty :math:`\rho = \beta_k`: ``"quadratic"``
    :math:`\lambda^\top c + \tfrac{\beta_k}{2}\|[c]_+\|^2` (inequalities; :math:`\|c\|^2` for
    equalities) or ``"hpr"`` :math:`\tfrac{1}{2\beta_k}(\|[\lambda+\beta_k c]_+\|^2 -
    \|\lambda\|^2)`. :meth:`forward_update` returns it at the *new* :math:`(\lambda, \beta)`
    after a dual step, as the paper pairs :math:`\lambda_{k+1}` with :math:`\beta_{k+1}`.
    ``lr=0`` gives the plain Lagrangian and no dual step.

    Reductions: ``sigma=1``, ``gamma=math.inf`` is ALM with dual step and quadratic penalty
    both :math:`\beta_0` (``ALM(lr=beta_0, penalty=beta_0)``).

    Example::

        dual = iALM(m=1, lr=1.0, sigma=1.05, gamma=0.5, inner_steps=len(loader), is_ineq=True)
        for epoch in range(epochs):
            for x, s, y in loader:
                optimizer.zero_grad()
                dual.forward_update(loss_fn(model(x), y), gap(model(x), s) - 0.05).backward()
                optimizer.step()

    Departure from humancompatible-train 0.4.2: it grows :math:`\beta` after every call and
    pairs the updated :math:`\lambda` with the previous :math:`\beta` in the Lagrangian; both
    coincide with this class when ``sigma=1``.

    References: Z. Li, P.-Y. Chen, S. Liu, S. Lu, Y. Xu, "Rate-improved inexact augmented
    Lagrangian method for constrained nonconvex optimization", AISTATS 2021; its stochastic
    form, Z. Li et al., "Stochastic inexact augmented Lagrangian method for nonconvex
    expectation constrained optimization", Comput. Optim. Appl. 2023 (the reference of
    humancompatible-train's iALM).
    """

    _HYPERPARAMETERS = {**DualOptimizer._HYPERPARAMETERS, "sigma": real(low=1.0),
                        "gamma": real(low=0.0, low_open=True, finite=False),
                        "beta_max": real(low=0.0, low_open=True, finite=False),
                        "inner_steps": integer(minimum=1), "augmentation": choice(_AUGMENTATIONS)}

    def __init__(
        self,
        m: int | None = None,
        lr: float = 1.0,
        *,
        sigma: float = 1.0,
        gamma: float = 1.0,
        beta_max: float = math.inf,
        inner_steps: int = 1,
        augmentation: str = "quadratic",
        init_duals: float | Tensor | Sequence[float] = 0.0,
        dual_range: tuple[float, float] | None = None,
        is_ineq: bool = False,
        name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        process_group: Any | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(lr=lr, sigma=sigma, gamma=gamma, beta_max=beta_max,
                        inner_steps=inner_steps, augmentation=augmentation)
        super().__init__(m, defaults, init_duals=init_duals, is_ineq=is_ineq,
                         dual_range=dual_range, name=name, device=device, dtype=dtype,
                         process_group=process_group, check_finite=check_finite)

    def _init_state(self, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": 0, "outer": 0}

    def _validate_state(self, group: dict[str, Any], state: dict[str, Any], where: str) -> None:
        if state["outer"] > state["step"]:
            raise fail("outer", f"at most the step count {state['step']} (one outer iteration "
                       "ends at a step)", state["outer"], f"{where}: state: ")

    def beta(self, group: dict[str, Any]) -> float:
        r""":math:`\beta_k` of ``group`` now: penalty of its Lagrangian and cap of its next
        dual step."""
        k = self.state[group["params"][0]]["outer"]
        return penalty_at(group, k)

    def _dual_step(self, group: dict[str, Any], state: dict[str, Any], c: Tensor) -> None:
        if (state["step"] + 1) % group["inner_steps"]:
            return  # inside an outer iteration: lambda and beta stay fixed
        beta = penalty_at(group, state["outer"])
        # w = min(beta, gamma / ||c||) as tensor ops: no host read; ||c|| = 0 gives beta.
        w = (group["gamma"] / torch.linalg.vector_norm(c)).clamp_(max=beta)
        duals = group["params"][0]
        self._clamp(group, duals.addcmul_(c, w))
        state["outer"] += 1

    def _lagrangian_term(self, group: dict[str, Any], duals: Tensor, c: Tensor) -> Tensor:
        # ALM's augmented term, read with penalty beta_k: one implementation of the
        # augmentation for both methods.
        beta = self.beta(group)
        view = {"augmentation": group["augmentation"] if beta > 0 else None, "penalty": beta,
                "is_ineq": group["is_ineq"]}
        return ALM._lagrangian_term(self, view, duals, c)  # type: ignore[arg-type]

    def _zero_step_is_identity(self, group: dict[str, Any]) -> bool:
        # A zero value leaves lambda, but the outer counter (so beta) moves on at the end of
        # an outer iteration; the counter is not per constraint, so masking keeps it moving.
        return True


def penalty_at(group: dict[str, Any], k: int) -> float:
    r""":math:`\min(\beta_0 \sigma^k, \beta_{\max})` of ``group`` after ``k`` outer iterations."""
    try:
        beta = group["lr"] * group["sigma"] ** k
    except OverflowError:  # sigma ** k past the float range
        beta = math.inf
    return min(beta, group["beta_max"])
