"""One worker for every two-process test: gloo on CPU, the body, then a clean exit.

``mp.start_processes(gloo_worker, args=(world, init_method, body, *args), nprocs=world,
start_method="spawn")`` runs ``body(rank, *args)`` in each process with the default process
group initialised; ``body`` must be a module-level function (spawn pickles it by name).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any

import torch.distributed as dist


def gloo_worker(rank: int, world: int, init_method: str, body: Callable[..., Any],
                *args: Any) -> None:
    # A short timeout turns a hang (one rank raising before a collective) into a failure.
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        body(rank, *args)
        # Leave together: a rank tearing down gloo while its peer still talks aborts the
        # peer. The barrier also shows that the process group survived the body.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Everything is written and the group is gone: skip the interpreter's finalisation, where
    # gloo's threads can still abort the process ("terminate called without an active
    # exception", seen on a loaded 2-core machine) and turn a passed run into a crash.
    os._exit(0)
