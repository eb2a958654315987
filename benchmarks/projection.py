"""Speed of the exact per-batch projection (``FairProjection.project``), CPU, one thread.

Every figure is printed in milliseconds and as a ratio to ``torch.sort`` of the same batch
(a floor for any exact method that orders the predictions), both measured in the same run.

Cases: batches of 64, 2,000 and 1,000,000 predictions with 2 groups, and 2,000 with 18 groups;
each without bounds, with bounds that no prediction reaches (the box is checked, then
skipped) and with bounds that clip about 5 % of the predictions (the bounded search).
``forward`` is ``project(z, groups)`` (the default input checks included); ``fwd+bwd`` adds
the backward pass of ``q.sum()`` through it.

Targets (the performance issue): at batch 64 x 2 groups the forward at most 10x a sort
without bounds and 20x with active bounds; no regression at 2,000 and 1,000,000. When
cvxpylayers is installed, the layer of the fairness_training inference guide (SCS through
cvxpylayers, rebuilt per batch size) is timed at 2,000 x 2 with active bounds too.

    flock /tmp/bench.lock python benchmarks/projection.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from humancompatible_train.dual_optim.projection import FairProjection

TARGETS = {("none", "forward"): 10.0, ("active", "forward"): 20.0}  # at batch 64 x 2 groups


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn`` over ``reps`` calls (after one warm-up call), seconds."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cvxpy_layer(n: int, eps: float, bounds: tuple[float, float]):
    """The inference guide's layer: min |q - z|^2 s.t. |a^T q| <= eps, lo <= q <= hi."""
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer
    except ImportError:
        return None
    z = cp.Parameter(n)
    a = cp.Parameter(n)
    q = cp.Variable(n)
    cons = [cp.abs(a @ q) <= eps, q >= bounds[0], q <= bounds[1]]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(q - z)), cons)
    return CvxpyLayer(prob, parameters=[z, a], variables=[q])


def compare_cvxpylayers(z: torch.Tensor, g: torch.Tensor, eps: float,
                        bounds: tuple[float, float], reps: int, ours: float) -> None:
    layer = cvxpy_layer(z.numel(), eps, bounds)
    if layer is None:
        print("  (cvxpylayers not installed: the inference guide's layer is not timed)")
        return
    a = torch.where(g == 1, 1.0 / (g == 1).sum(), -1.0 / (g == 0).sum()).double()
    zd = z.double().requires_grad_()
    tc = median_time(lambda: layer(zd, a), reps)
    q_ref = layer(zd, a)[0].detach()
    q = FairProjection(2, eps, bounds=bounds).project(z.double(), g)[0]
    print(f"  cvxpylayers (the inference guide's layer), 2,000 x 2, box active: forward "
          f"{tc * 1e3:.1f} ms ({tc / ours:.0f}x the exact projection); "
          f"max |q - q_cvxpy| = {float((q - q_ref).abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    eps = 0.05
    print(f"torch {torch.__version__}, CPU, 1 thread, float32, eps {eps}, median per call; "
          "ratios to torch.sort of the same batch")
    print(f"{'batch':>9s} {'groups':>6s} {'box':>8s} {'sort':>10s} {'forward':>11s} "
          f"{'/sort':>7s} {'fwd+bwd':>11s} {'/sort':>7s}")
    verdicts = []
    for n, S in ((64, 2), (2000, 2), (1_000_000, 2), (2000, 18)):
        z = torch.randn(n, generator=gen)
        g = torch.randint(0, S, (n,), generator=gen)
        z += 0.3 * g / max(1, S - 1)
        big = n > 100_000
        reps = (2 if args.quick else 5) if big else (200 if args.quick else 2000)
        base = median_time(lambda z=z: torch.sort(z), reps)
        lo, hi = (-1.96, 2.1) if big else (float(z.quantile(0.025)), float(z.quantile(0.975)))
        for label, bounds in (("none", None), ("inactive", (-50.0, 50.0)),
                              ("active", (lo, hi))):
            proj = FairProjection(S, eps, bounds=bounds)
            fwd = median_time(lambda p=proj, z=z, g=g: p.project(z, g), reps)
            zg = z.clone().requires_grad_()

            def both(p=proj, zg=zg, g=g) -> None:
                p.project(zg, g)[0].sum().backward()

            fb = median_time(both, max(2, reps // 2))
            active = bool(proj.project(z, g)[1].box_active)
            assert active == (label == "active"), (label, active)
            print(f"{n:9,d} {S:6d} {label:>8s} {base * 1e3:7.3f} ms {fwd * 1e3:8.3f} ms "
                  f"{fwd / base:6.1f}x {fb * 1e3:8.3f} ms {fb / base:6.1f}x")
            if n == 64 and (label, "forward") in TARGETS:
                target = TARGETS[(label, "forward")]
                verdicts.append(f"batch 64 x 2, {label} box: forward {fwd / base:.1f}x a sort "
                                f"(target <= {target:.0f}x): "
                                f"{'met' if fwd / base <= target else 'NOT met'}")
            if n == 2000 and S == 2 and label == "active":
                compare_cvxpylayers(z, g, eps, (lo, hi), 3 if args.quick else 10, fwd)
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
