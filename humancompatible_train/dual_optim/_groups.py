"""Constraint groups of a dual optimizer: each is one ``param_group`` holding its 1-D
multiplier tensor, name, size and hyperparameters; adding one checks everything before it
changes anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._validation import check_int, fail
from . import _inputs

__all__ = ["ConstraintGroups"]


class ConstraintGroups:
    """Mixin of :class:`~humancompatible_train.dual_optim.base.DualOptimizer` (placed before
    :class:`torch.optim.Optimizer`, whose ``add_param_group`` it guards): adding groups, and
    reading their names, sizes and multipliers."""

    param_groups: list[dict[str, Any]]
    defaults: dict[str, Any]
    state: Any
    _ALIASES: dict[str, str]
    _placeholder: bool
    _validated: list[tuple[Any, ...] | None]
    _flags: dict[str, Any]
    _device: torch.device
    _dtype: torch.dtype
    _normalized: Any
    _init_state: Any
    _snapshot: Any

    def add_constraint_group(
        self,
        m: int,
        *,
        name: str | None = None,
        init_duals: float | Tensor | Sequence[float] | None = None,
        **hyperparameters: Any,
    ) -> None:
        """Add a group of ``m`` constraints with its own multipliers and hyperparameters.

        Settings not given are taken from the constructor's defaults. Nothing changes when an
        argument is invalid.
        """
        m = check_int("m", m, minimum=1)
        given = {}
        for key, value in hyperparameters.items():
            key = self._ALIASES.get(key, key)
            if key in given:
                raise ValueError(f"{key}: expected once, got it under two names")
            given[key] = value
        unknown = set(given) - set(self.defaults)
        if unknown:
            public = sorted(set(self.defaults) - set(self._ALIASES.values())
                            | set(self._ALIASES))
            raise ValueError(
                f"unknown hyperparameter(s) {sorted(unknown)} for {type(self).__name__}; "
                f"expected some of {public}"
            )
        if name is None:
            name = f"g{len(self.param_groups)}"
        elif not isinstance(name, str):
            raise fail("name", "a string", name)
        if name in self.names:
            raise ValueError(f"name: expected a new group name, got {name!r}, which exists "
                             f"already: {self.names}")
        where = f"constraint group {name!r}"
        group = self._normalized(dict(self.defaults, **given, name=name, m=m), where)
        duals = self._initial_duals(init_duals, m, where, group)
        group["params"] = [duals]
        state = self._init_state(group)
        self._placeholder = True
        try:
            super().add_param_group(group)
        finally:
            self._placeholder = False
        self.state[duals] = state
        self._validated.append(self._snapshot(group))
        self._flags["checked_group"] = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._placeholder:
            super().add_param_group(param_group)
            return
        raise TypeError(
            f"{type(self).__name__} holds multipliers, not model parameters: use "
            "add_constraint_group(m, name=..., **hyperparameters)"
        )

    def _initial_duals(self, init_duals: Any, m: int, where: str, group: dict[str, Any]
                       ) -> Tensor:
        return _inputs.initial_duals(init_duals, m, group["dual_range"], self._dtype,
                                     self._device, where)

    @property
    def names(self) -> list[str]:
        """The constraint groups' names, in registration order."""
        return [g["name"] for g in self.param_groups]

    @property
    def m(self) -> int:
        """Total number of constraints over all groups."""
        return sum(g["m"] for g in self.param_groups)

    @property
    def duals(self) -> Tensor:
        """All multipliers as one flat detached tensor (a copy), in registration order."""
        if not self.param_groups:
            return torch.zeros(0, device=self._device, dtype=self._dtype)
        return torch.cat([g["params"][0].detach() for g in self.param_groups]).clone()

    def dual(self, name: str) -> Tensor:
        """The multiplier tensor of the group called ``name`` (the live tensor)."""
        for g in self.param_groups:
            if g["name"] == name:
                return g["params"][0]
        raise KeyError(f"no constraint group named {name!r}; groups are {self.names}")

    @property
    def duals_by_name(self) -> dict[str, Tensor]:
        """``{name: multipliers}`` (copies) for logging."""
        return {g["name"]: g["params"][0].detach().clone() for g in self.param_groups}
