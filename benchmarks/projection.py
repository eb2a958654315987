"""Speed of the exact per-batch projection (``FairProjection.project``), CPU, one thread.

Cases of the issue: batch 64, 2,000 and 1,000,000 with 2 groups, and 2,000 with 18 groups.
Each runs without bounds (closed form), with bounds that no prediction reaches (the box is
checked, then skipped) and with bounds that clip about 5% of the predictions (the exact
breakpoint search). Forward only, and forward + backward of ``q.sum()``.

Baselines measured in the same run: ``torch.sort`` of the same batch (a floor for any exact
method that orders the predictions) and, when cvxpylayers is installed, seed 001's
formulation (rebuilt per batch size, SCS through cvxpylayers, bounds included). Targets on
CPU: 2,000 x 2 groups <= 1 ms, 1,000,000 <= 1 s, 2,000 x 18 groups <= 5 ms.

    python benchmarks/projection.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from humancompatible_train.dual_optim.projection import FairProjection


def median_time(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cvxpy_layer(n: int, eps: float, bounds: tuple[float, float]):
    """Seed 001's layer: min |q - z|^2 s.t. |a^T q| <= eps, lo <= q <= hi (two groups)."""
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
                        bounds: tuple[float, float], reps: int, reps_ours: int) -> None:
    layer = cvxpy_layer(z.numel(), eps, bounds)
    if layer is None:
        print("  (cvxpylayers not installed: seed 001's layer not timed)")
        return
    a = torch.where(g == 1, 1.0 / (g == 1).sum(), -1.0 / (g == 0).sum()).double()
    zd = z.double().requires_grad_()
    tc = median_time(lambda: layer(zd, a), reps)
    tcb = median_time(lambda: layer(zd, a)[0].sum().backward(), reps)
    proj = FairProjection(2, eps, bounds=bounds)
    ours = median_time(lambda: proj.project(z, g), reps_ours)
    zg = z.clone().requires_grad_()
    ours_b = median_time(lambda: proj.project(zg, g)[0].sum().backward(), reps_ours)
    q_ref = layer(zd, a)[0].detach()
    q = proj.project(z.double(), g)[0]
    print(f"  cvxpylayers (seed 001), batch 2,000, box active: forward {tc * 1e3:.1f} ms "
          f"({tc / ours:.0f}x the exact projection), fwd+bwd {tcb * 1e3:.1f} ms "
          f"({tcb / ours_b:.0f}x); max |q - q_cvxpy| = {float((q - q_ref).abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    eps = 0.05
    print(f"torch {torch.__version__}, CPU, 1 thread, float32, eps {eps}, median per batch")
    print(f"{'batch':>9s} {'groups':>6s} {'box':>8s} {'forward':>11s} {'fwd+bwd':>11s} "
          f"{'sort':>10s} {'fwd/sort':>8s}")
    for n, S in ((64, 2), (2000, 2), (1_000_000, 2), (2000, 18)):
        z = torch.randn(n, generator=gen)
        g = torch.randint(0, S, (n,), generator=gen)
        z += 0.3 * g / max(1, S - 1)
        big = n > 100_000
        reps = (2 if args.quick else 5) if big else (30 if args.quick else 200)
        base = median_time(lambda z=z: torch.sort(z), reps)
        lo, hi = float(z.quantile(0.025)) if not big else -1.96, \
            float(z.quantile(0.975)) if not big else 2.1
        for label, bounds in (("none", None), ("inactive", (-50.0, 50.0)),
                              ("active", (lo, hi))):
            proj = FairProjection(S, eps, bounds=bounds)
            fwd = median_time(lambda p=proj, z=z, g=g: p.project(z, g), reps)
            zg = z.clone().requires_grad_()

            def both(p=proj, zg=zg, g=g) -> None:
                p.project(zg, g)[0].sum().backward()

            fb = median_time(both, reps)
            active = bool(proj.project(z, g)[1].box_active)
            assert active == (label == "active"), (label, active)
            print(f"{n:9,d} {S:6d} {label:>8s} {fwd * 1e3:8.3f} ms {fb * 1e3:8.3f} ms "
                  f"{base * 1e3:7.3f} ms {fwd / base:7.1f}x")
        if n == 2000 and S == 2:
            compare_cvxpylayers(z, g, eps, (lo, hi), 3 if args.quick else 10, reps)

if __name__ == "__main__":
    main()
