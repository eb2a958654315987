"""Step hooks around ``forward_update``, as torch.optim's wrapper runs them around ``step``.

``forward_update`` bypasses the wrapped ``step`` (its layers cost about 1.5 % of a small
model's training step), so it runs the same hooks itself: global then per-optimizer pre-hooks,
which may replace the arguments, and per-optimizer then global post-hooks. The arguments are
those of the equivalent call ``step(constraints, dual_constraints=...)``.
"""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING, Any

from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

if TYPE_CHECKING:
    from .base import DualOptimizer

Arguments = tuple[tuple[Any, ...], dict[str, Any]]


def has_step_hooks(opt: DualOptimizer) -> bool:
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks)


def run_step_pre_hooks(opt: DualOptimizer, constraints: Any, dual_constraints: Any
                       ) -> Arguments:
    args: tuple[Any, ...] = (opt, constraints)
    kwargs: dict[str, Any] = {}
    if dual_constraints is not None:
        kwargs["dual_constraints"] = dual_constraints
    for hook in chain(_global_optimizer_pre_hooks.values(),
                      opt._optimizer_step_pre_hooks.values()):
        result = hook(opt, args, kwargs)
        if result is not None:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise RuntimeError(f"a step pre-hook must return None or a tuple "
                                   f"(new_args, new_kwargs), got {result!r}")
            args, kwargs = result
    return args, kwargs


def step_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``(constraints, dual_constraints)`` from the (possibly replaced) step arguments."""
    if len(args) > 1:
        constraints = args[1]
    elif "constraints" in kwargs:
        constraints = kwargs["constraints"]
    else:
        raise ValueError("a step pre-hook returned arguments without the constraints: "
                         f"expected (optimizer, constraints, ...), got {args!r}")
    dual_constraints = args[2] if len(args) > 2 else kwargs.get("dual_constraints")
    return constraints, dual_constraints


def run_step_post_hooks(opt: DualOptimizer, args: tuple[Any, ...], kwargs: dict[str, Any]
                        ) -> None:
    for hook in chain(opt._optimizer_step_post_hooks.values(),
                      _global_optimizer_post_hooks.values()):
        hook(opt, args, kwargs)
