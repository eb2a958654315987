"""Per-step overhead of a dual optimizer against a plain training step.

Same MLP (64-32), batch 256, one thread; each repetition runs every variant once, in a
shuffled order (interleaved), so slow drifts of the machine hit all variants alike. Prints the
median step time of each variant and its ratio to the plain step measured in the same run.

    python benchmarks/overhead.py [--reps 400] [--features 100]

"fixed penalty" computes the same constraint values and adds them with a fixed weight: the
cost of evaluating the constraints without any dual optimizer; the ratio to it is the dual
optimizer's own overhead.

With the ``compare`` extra installed, humancompatible-train's ALM and Cooper's simultaneous
Lagrangian are measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch

from humancompatible_train.dual_optim import ALM, PrimalDual


def make_model(features: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(features, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
        torch.nn.ReLU(), torch.nn.Linear(32, 1),
    )


def constraint_values(out: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    # m differentiable constraints from the batch output; identical work for every method.
    return torch.sigmoid(out).mean() * coef - 0.5


def variants(features: int, m: int) -> dict:
    coef = torch.linspace(0.5, 1.5, m)
    x = torch.randn(256, features)
    y = (torch.rand(256, 1) < 0.5).float()
    bce = torch.nn.BCEWithLogitsLoss()
    out = {}

    def training_step(lagrangian):
        # Every variant is the same step around its own objective, on its own model and
        # optimizer; only what lagrangian(output) computes differs.
        model = make_model(features)
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def step():
            opt.zero_grad()
            lagrangian(model(x)).backward()
            opt.step()
        return step

    def plain():
        return training_step(lambda o: bce(o, y))
    out["plain"] = plain()

    def penalty():
        # The same constraint values added with a fixed weight: what computing the
        # constraints costs by itself, without any dual optimizer.
        w = torch.full((m,), 0.01)
        return training_step(lambda o: bce(o, y) + torch.dot(w, constraint_values(o, coef)))
    out["fixed penalty (no dual)"] = penalty()

    def hand_written():
        # The floor for any dual optimizer: projected dual ascent written inline, with no
        # input checks, no finiteness test and no state bookkeeping.
        lam = torch.zeros(m)

        def lagrangian(o):
            c = constraint_values(o, coef)
            lam.add_(c.detach(), alpha=0.01).clamp_(min=0.0)
            return bce(o, y) + torch.dot(lam, c)
        return training_step(lagrangian)
    out["hand-written dual ascent"] = hand_written()

    def hand_written_checked():
        # The same, plus the two things a dual optimizer does by default: one read of the
        # constraint values to refuse NaN/Inf before any state changes, and a snapshot of
        # the multipliers for the Lagrangian (gradient accumulation). The floor for ours.
        lam = torch.zeros(m)

        def lagrangian(o):
            c = constraint_values(o, coef)
            cd = c.detach()
            if not math.isfinite(float(cd.sum() if m > 1 else cd)):
                raise ValueError("non-finite constraint")
            lam.add_(cd, alpha=0.01).clamp_(min=0.0)
            return bce(o, y) + torch.dot(lam.clone(), c)
        return training_step(lagrangian)
    out["hand-written, NaN check + snapshot"] = hand_written_checked()

    def ours(cls, **kw):
        # Each variant builds its dual in its own scope, so the closure below cannot pick up
        # another variant's objects.
        dual = cls(m=m, is_ineq=True, **kw)
        return training_step(
            lambda o: dual.forward_update(bce(o, y), constraint_values(o, coef)))
    out["ours ALM"] = ours(ALM, lr=0.01)
    out["ours ALM (check_finite=False)"] = ours(ALM, lr=0.01, check_finite=False)
    out["ours PrimalDual"] = ours(PrimalDual, eta_0=0.5)

    try:
        from humancompatible.train.dual_optim import ALM as PeerALM

        out["humancompatible-train ALM"] = ours(PeerALM, lr=0.01)
    except ImportError:
        pass

    def cooper_variant():
        import cooper

        model = make_model(features)

        class CMP(cooper.ConstrainedMinimizationProblem):
            def __init__(self):
                super().__init__()
                mult = cooper.multipliers.DenseMultiplier(num_constraints=m)
                self.c = cooper.Constraint(cooper.ConstraintType.INEQUALITY,
                                           formulation_type=cooper.formulations.Lagrangian,
                                           multiplier=mult)

            def compute_cmp_state(self, model, x, y):
                o = model(x)
                return cooper.CMPState(
                    loss=bce(o, y),
                    observed_constraints={self.c: cooper.ConstraintState(
                        violation=constraint_values(o, coef))})

        cmp = CMP()
        primal = torch.optim.Adam(model.parameters(), 1e-3)
        dual_opt = torch.optim.SGD(cmp.dual_parameters(), lr=0.01, maximize=True)
        coop = cooper.optim.SimultaneousOptimizer(cmp, primal, dual_opt)

        def cooper_step():
            coop.roll(compute_cmp_state_kwargs={"model": model, "x": x, "y": y})
        return cooper_step

    try:
        out["Cooper simultaneous"] = cooper_variant()
    except ImportError:
        pass
    # A second, identical plain step: its ratio to the first shows the noise floor of this
    # run (memory layout of each model, caches) that every ratio above carries.
    out["plain (second copy)"] = plain()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--m", type=int, nargs="+", default=[1, 100, 10_000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    print(f"torch {torch.__version__}, 1 thread, MLP {args.features}-64-32-1, batch 256, "
          f"median of {args.reps} interleaved repetitions")
    for m in args.m:
        steps = variants(args.features, m)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.warmup):
            for f in steps.values():
                f()
        order = list(steps.items())
        for _ in range(args.reps):
            # A fresh order every round: no variant always runs right after the same one.
            rng.shuffle(order)
            for k, f in order:
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        base = statistics.median(times["plain"])
        pen = statistics.median(times["fixed penalty (no dual)"])
        print(f"\nm = {m}")
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"  {k:32s} {med * 1e6:9.1f} us   {med / base:5.3f}x plain   "
                  f"{med / pen:5.3f}x fixed penalty")


if __name__ == "__main__":
    main()
