"""Device, dtype, attention-implementation and thread choice."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from embedrail.errors import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_placement(device: str = "auto", dtype: str | None = None, attn: str | None = None) -> Placement:
    """``auto``: CUDA when present (bf16 where supported else fp16; flash-attention-2 if installed,
    else SDPA), otherwise CPU fp32 with SDPA. The device string is the only switch."""
    device = (device or "auto").lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' was asked for but Metal is not available; use device='cpu' or 'auto'")
    dev = torch.device(device)
    if dtype is not None:
        torch_dtype = _DTYPES[dtype]
    elif dev.type == "cuda":
        torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        torch_dtype = torch.float32
    if attn is None:
        half = torch_dtype in (torch.bfloat16, torch.float16)
        attn = "flash_attention_2" if dev.type == "cuda" and half and flash_attn_available() else "sdpa"
    return Placement(dev, torch_dtype, attn)


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA (or MPS) out-of-memory error."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":  # pragma: no cover
        torch.mps.empty_cache()
