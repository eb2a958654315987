"""Cost of FairInference per call, excluding the model's forward, against that forward.

The wrapper serves a stream of batch 1 (streaming regime), batch 16 (streaming) and batch 64
(= b_tau: exact per-batch projection). Each repetition times the model's forward alone and
the wrapper's adjustment of that output, interleaved; medians are printed with the ratio
wrapper / forward and the samples per second of the wrapper alone. Targets (issue #6):
batch 64 <= 0.64 ms (>= 100,000 samples/s), batch 1 <= 0.2 ms.

    python benchmarks/inference.py [--reps 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from humancompatible_train.inference import FairInference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32),
                                torch.nn.ReLU(), torch.nn.Linear(32, 1)).eval()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, MLP 20-64-32-1, median of {args.reps} calls")
    print(f"  {'batch':>5s} {'forward':>12s} {'wrapper':>12s} {'wrapper/fwd':>12s} "
          f"{'samples/s':>12s}")
    for batch in (1, 16, 64):
        fi = FairInference(b_tau=64, fairness_tolerance=0.05, eta_0=0.5)
        x = torch.randn(args.reps + 100, batch, 20, generator=gen)
        g = (torch.rand(args.reps + 100, batch, generator=gen) < 0.3).long()
        x[..., 0] += g
        fwd, wrap = [], []
        with torch.no_grad():
            for i in range(args.reps + 100):
                t0 = time.perf_counter()
                z = model(x[i])
                t1 = time.perf_counter()
                fi.adjust(z, g[i])
                t2 = time.perf_counter()
                if i >= 100:  # warm-up
                    fwd.append(t1 - t0)
                    wrap.append(t2 - t1)
        f, w = statistics.median(fwd), statistics.median(wrap)
        print(f"  {batch:5d} {f * 1e3:9.3f} ms {w * 1e3:9.3f} ms {w / f:11.2f}x "
              f"{batch / w:12,.0f}")


if __name__ == "__main__":
    main()
