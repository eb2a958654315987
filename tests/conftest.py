import os

import torch

# Two cores on CI: keep intra-op threads from oversubscribing when pytest runs in one process.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
