"""Devices, numeric precision and collectives: what training and inference share.

One place decides which device a process uses, which autocast context a forward pass
runs under, and how a tensor takes part in a ``torch.distributed`` collective. NCCL
(the GPU backend Ray Train and ``torchrun`` use) only reduces CUDA tensors, so every
collective goes through :func:`all_reduce_sum`, which moves the tensor to the process
group's device and back.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Precision",
    "all_reduce_sum",
    "autocast",
    "collective_device",
    "grad_scaler",
    "prepare_for_device",
    "resolve_device",
    "resolve_precision",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None: CUDA when available (this process's current device), else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for but CUDA is not available in this process")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA device that supports it, else fp32.

    fp16 and bf16 are autocast modes; on the CPU only bf16 is supported (fp16 autocast
    there is slow and lacks kernels), so asking for fp16 on the CPU is an error.
    """
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler that is active for fp16 only (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def prepare_for_device(model: nn.Module, device: torch.device, *, channels_last: bool = False) -> nn.Module:
    """Move ``model`` to ``device``, optionally in channels-last memory format."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def collective_device() -> torch.device:
    """The device tensors must be on for this process group's collectives."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks; returns the sum on ``tensor``'s device.

    A no-op without an initialised process group. Every rank must call it the same
    number of times, with tensors of the same shape, or the group hangs.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    target = collective_device()
    work = tensor.to(target) if tensor.device != target else tensor.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)
