"""Test-session settings shared by the whole suite."""

from __future__ import annotations

import torch

# These machines have 2 cores shared with other work; torch's default intra-op threads make small forward
# passes many times slower under contention. One thread keeps the suite fast and its timing steady.
torch.set_num_threads(1)
