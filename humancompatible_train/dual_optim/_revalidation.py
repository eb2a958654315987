"""Hyperparameter checks of dual optimizers that run again whenever a value changed: at
construction, in ``add_constraint_group`` and ``load_state_dict``, and before a step or
forward after anything (a learning-rate scheduler, a user) wrote into a param group."""

from __future__ import annotations

import operator
from typing import Any

from .._validation import check_bool
from . import _inputs

try:
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # torch < 2.3: no compiler to skip the re-check for
    def _is_compiling() -> bool:
        return False

__all__ = ["Revalidation"]


class Revalidation:
    """Mixin of :class:`~humancompatible_train.dual_optim.base.DualOptimizer`: canonical
    group values and the identity-based re-check of changed groups. Uses ``param_groups``,
    ``_keys`` (the hyperparameter keys), ``_validated`` (one snapshot per group) and
    ``_validate_group``."""

    param_groups: list[dict[str, Any]]
    _keys: tuple[str, ...]
    _validated: list[tuple[Any, ...] | None]
    _validate_group: Any

    def _normalized(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """A copy of ``group`` with ``is_ineq`` and ``dual_range`` in canonical form, after
        :meth:`_validate_group` accepted it; raises a ValueError otherwise."""
        group = dict(group)
        group["is_ineq"] = check_bool("is_ineq", group["is_ineq"], f"{where}: ")
        group["dual_range"] = _inputs.as_range(group["dual_range"], group["is_ineq"], where)
        self._validate_group(group, where)
        return group

    def _check_hyperparameters(self) -> None:
        """Re-validate the groups whose hyperparameters changed since they were validated.

        Identity of the values is compared (no host read, well under a microsecond a group),
        so a scheduler's new ``lr`` is checked once, at the first step that uses it. Inside a
        function compiled with ``torch.compile`` the re-check is skipped: the compiler turns a
        scheduler's float into a graph input that Python cannot inspect while tracing (the
        next eager call checks it).
        """
        if _is_compiling():
            return
        for i, (group, seen) in enumerate(zip(self.param_groups, self._validated)):
            if not self._unchanged(group, seen):
                self._revalidate(i)

    @staticmethod
    def _snapshot(group: dict[str, Any]) -> tuple[Any, ...]:
        # Every value of the group, in order: a key added or removed changes the length.
        return tuple(group.values())

    @staticmethod
    def _unchanged(group: dict[str, Any], seen: tuple[Any, ...] | None) -> bool:
        # Identity, element by element, in one pass of builtins that run in C and that
        # torch.compile traces (an operator.itemgetter would break its graph).
        return seen is not None and len(seen) == len(group) and all(
            map(operator.is_, group.values(), seen))

    def _revalidate(self, i: int) -> None:
        group = self.param_groups[i]
        where = f"constraint group {group['name']!r}"
        missing = [k for k in self._keys if k not in group]
        if missing:
            raise ValueError(f"{where}: expected the hyperparameters {list(self._keys)} in "
                             f"its param group, got none for {missing}")
        try:
            checked = self._normalized(group, where)
        except ValueError as exc:
            raise ValueError(f"{exc} (a value written into the param group after it was "
                             "checked, e.g. by a learning-rate scheduler)") from None
        group["is_ineq"], group["dual_range"] = checked["is_ineq"], checked["dual_range"]
        self._validated[i] = self._snapshot(group)
