"""Where a network runs: one rule for training, validation, scoring and the benchmarks."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when there is one, else the CPU; anything else as torch reads it
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
