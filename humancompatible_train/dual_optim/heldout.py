r"""Constraint values measured on held-out data, to drive the dual step.

A constraint met on the batches the model fits is met on the training data; on data the
model never saw it is usually exceeded (the fairness gap of a model generalises like its
loss does). Cotter, Jiang, Wang, Narayan, Gupta, You & Sridharan (ICML 2019, "Training
well-generalizing classifiers for fairness metrics and other data-dependent constraints")
split the two players: the model descends the Lagrangian on training batches while the
multipliers ascend on constraint values measured on an *independent* sample. The
multipliers then rise until the constraint holds where the model did not fit, and it
generalises to the test data.

:class:`HeldOutConstraints` is that second sample in two lines::

    held_out = HeldOutConstraints(val_loader, lambda x, s, y: constraint(model(x), s, y),
                                  model=model)
    ...
    lagrangian = dual.forward_update(loss, rows.values, dual_constraints=held_out())

Each call draws the next validation batch (restarting the loader when it is exhausted),
evaluates the constraint on it without gradients and with the model in evaluation mode, and
returns the values (plus an optional safety ``margin``). Use it with ``dual_constraints=``
(a dual step on every training step) or call ``dual.step(held_out())`` every few steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from .._validation import check_int, check_real, fail

__all__ = ["HeldOutConstraints"]


class HeldOutConstraints:
    r"""Cycle a validation loader and compute constraint values there, for the dual step.

    Args:
        loader: any re-iterable of batches (a :class:`torch.utils.data.DataLoader`, a list).
        constraints: called as ``constraints(*batch)`` for a tuple/list batch, else
            ``constraints(batch)``; returns the constraint values (``<= 0`` wanted) as a
            tensor, a sequence or mapping of tensors (the dual optimizer's layouts), or an
            object with a ``values`` tensor (:class:`~humancompatible_train.fairness.
            ConstraintValues`).
        model: when given, put in evaluation mode for the computation and restored to its
            previous mode afterwards (dropout off, batch-norm statistics untouched).
        margin: :math:`\delta \ge 0` added to every value: the multipliers then ascend
            until :math:`c + \delta \le 0` on held-out data, i.e. a constraint
            ``gap - eps <= 0`` is trained at ``eps - delta``.

    The values are computed under :func:`torch.no_grad` and returned detached. The object
    counts the batches drawn (:meth:`state_dict`); after :meth:`load_state_dict` the next
    call skips the batches of the current pass already used, so a loader that yields the
    same batches on every pass (``shuffle=False``, the usual choice for validation data)
    resumes exactly.
    """

    def __init__(self, loader: Iterable[Any], constraints: Callable[..., Any], *,
                 model: torch.nn.Module | None = None, margin: float = 0.0) -> None:
        if not callable(constraints):
            raise fail("constraints", "a callable batch -> constraint values", constraints)
        if isinstance(loader, Iterator):
            raise fail("loader", "a re-iterable (a DataLoader, a list), not a one-shot "
                       "iterator", type(loader).__name__)
        if not isinstance(loader, Iterable):
            raise fail("loader", "an iterable of batches", type(loader).__name__)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise fail("model", "a torch.nn.Module or None", type(model).__name__)
        self.loader = loader
        self.constraints = constraints
        self.model = model
        self.margin = check_real("margin", margin, low=0.0)
        self._iterator: Iterator[Any] | None = None
        self._passes = 0  # completed passes over the loader
        self._position = 0  # batches drawn in the current pass
        self._skip = 0  # batches to skip at the start of the next pass (after a load)

    def __repr__(self) -> str:
        return (f"HeldOutConstraints(margin={self.margin}, passes={self._passes}, "
                f"position={self._position})")

    @property
    def batches(self) -> int:
        """Number of batches drawn so far in the current pass."""
        return self._position

    @property
    def passes(self) -> int:
        """Number of completed passes over the loader."""
        return self._passes

    def _next_batch(self) -> Any:
        for _ in range(2):
            if self._iterator is None:
                self._iterator = iter(self.loader)
                for _ in range(self._skip):
                    next(self._iterator, None)
                self._skip = 0
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                if self._position == 0:
                    break
                self._passes += 1
                self._position = 0
                continue
            self._position += 1
            return batch
        raise fail("loader", "at least one batch", "an empty loader")

    def __call__(self) -> Any:
        """The constraint values on the next held-out batch (detached, plus the margin)."""
        batch = self._next_batch()
        training = self.model.training if self.model is not None else False
        try:
            if self.model is not None:
                self.model.eval()
            with torch.no_grad():
                out = (self.constraints(*batch) if isinstance(batch, (tuple, list))
                       else self.constraints(batch))
        finally:
            if self.model is not None:
                self.model.train(training)
        return self._shift(out)

    def _shift(self, out: Any) -> Any:
        if hasattr(out, "values") and isinstance(out.values, Tensor):
            out = out.values
        if isinstance(out, Tensor):
            return out.detach() + self.margin if self.margin else out.detach()
        if isinstance(out, Mapping):
            return {k: self._shift(v) for k, v in out.items()}
        if isinstance(out, (list, tuple)):
            return [self._shift(v) for v in out]
        raise fail("constraints", "a function returning tensors (or ConstraintValues)",
                   type(out).__name__)

    def state_dict(self) -> dict[str, Any]:
        """Counters of the batches drawn and the margin."""
        return {"passes": self._passes, "position": self._position, "margin": self.margin}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the counters; the next call starts a new pass of the loader and skips the
        batches of the saved pass already used."""
        try:
            passes, position, margin = (state_dict["passes"], state_dict["position"],
                                        state_dict["margin"])
        except (KeyError, TypeError):
            raise fail("state_dict", "a dict from HeldOutConstraints.state_dict()",
                       type(state_dict).__name__) from None
        passes = check_int("state_dict['passes']", passes, minimum=0)
        position = check_int("state_dict['position']", position, minimum=0)
        margin = check_real("state_dict['margin']", margin, low=0.0)
        self._passes, self._position, self.margin = passes, position, margin
        self._iterator, self._skip = None, position
