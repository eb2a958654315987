"""Speed of the exact per-batch projection (FairProjection.project), CPU, one thread.

Cases of issue #4: batch 64, 2,000 and 1,000,000 with 2 groups, and 2,000 with 18 groups;
each without a box (the closed form) and with prediction bounds (the breakpoint search).
The baseline measured in the same run is ``torch.sort`` of the same batch (a floor for any
exact method that must order the predictions); with cvxpylayers installed, seed 001's
cvxpy formulation is timed too. Targets: 2,000 x 2 groups <= 1 ms, 1,000,000 <= 1 s,
2,000 x 18 groups <= 5 ms.

    python benchmarks/projection.py
"""

from __future__ import annotations

import statistics
import time

import torch

from humancompatible_train.dual_optim import FairProjection


def timeit(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cvxpy_layer(n: int, eps: float, bounds):
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


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, float32, median time per batch")
    print(f"  {'batch':>9s} {'groups':>6s} {'box':>5s} {'project':>12s} {'sort':>10s} "
          f"{'project/sort':>12s}")
    for n, S in ((64, 2), (2000, 2), (1_000_000, 2), (2000, 18)):
        z = torch.randn(n, generator=gen)
        g = torch.randint(0, S, (n,), generator=gen)
        z += 0.3 * g
        reps = 5 if n > 100_000 else 200
        base = timeit(lambda z=z: torch.sort(z), reps)
        for bounds in (None, (-3.0, 3.0)):
            proj = FairProjection(S, 0.05, bounds=bounds)
            t = timeit(lambda proj=proj, z=z, g=g: proj.project(z, g), reps)
            print(f"  {n:9,d} {S:6d} {'yes' if bounds else 'no':>5s} {t * 1e3:9.3f} ms "
                  f"{base * 1e3:7.3f} ms {t / base:11.1f}x")
        if n == 2000 and S == 2:
            layer = cvxpy_layer(n, 0.05, (-3.0, 3.0))
            if layer is not None:
                a = torch.where(g == 1, 1.0 / (g == 1).sum(), -1.0 / (g == 0).sum()).double()
                tc = timeit(lambda layer=layer, z=z, a=a: layer(z.double(), a), 5)
                print(f"  cvxpylayers (seed 001), batch 2,000: {tc * 1e3:.1f} ms, "
                      f"{tc / t:.0f}x the boxed projection")


if __name__ == "__main__":
    main()
