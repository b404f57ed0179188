"""Shared setup for the training tests."""

from __future__ import annotations

import torch

# Tiny models run fastest on one thread; more threads only spin against each other on a shared CPU.
torch.set_num_threads(1)
