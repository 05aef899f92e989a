"""Where a network runs: one rule for training, validation, scoring and the benchmarks."""

from __future__ import annotations

import torch

__all__ = ["autocast_dtype", "native_bfloat16", "precision_name", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when there is one, else the CPU; anything else as torch reads it
    (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a :class:`torch.device`)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA device that reports it,
    or a CPU with AVX512-BF16 or AMX (elsewhere oneDNN emulates it, slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # private probes, present since torch 2.1; a torch without them gets float32
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def autocast_dtype(device: torch.device, amp: bool | str) -> torch.dtype | None:
    """The reduced precision a training step runs its network in, or None for float32.

    ``amp`` is ``train.amp``: False is float32; True is bfloat16 on a CPU and float16
    (with a gradient scaler) on CUDA; ``"auto"`` is the same where the device computes
    it natively (on a CPU, bfloat16 only with AVX512-BF16 or AMX) and float32 elsewhere.
    """
    if amp not in (True, False, "auto"):
        raise ValueError(f"amp is true, false or 'auto', got {amp!r}")
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (amp is True or native_bfloat16(device)):
        return torch.bfloat16
    return None


def precision_name(precision: torch.dtype | None) -> str:
    """``float32`` for None, else the dtype's name (``bfloat16``, ``float16``)."""
    return "float32" if precision is None else str(precision).removeprefix("torch.")
