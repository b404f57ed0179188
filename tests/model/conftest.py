"""Tiny models run fastest on one thread; more threads only spin against each other on a shared CPU."""

import torch

torch.set_num_threads(1)
