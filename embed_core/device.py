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
    dtype: torch.dtype  # the dtype the model's weights are loaded in
    attn_implementation: str
    compute_dtype: torch.dtype | None = None  # the packed paths' matrix products (None: ``dtype``)

    @property
    def compute(self) -> torch.dtype:
        return self.compute_dtype or self.dtype


def cpu_fast_bf16() -> bool:
    """True when this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX-BF16): there a bf16
    GEMM runs about 2x (AVX512-BF16) to 5x (AMX) the fp32 rate. Read from /proc/cpuinfo (Linux);
    ``EMBEDRAIL_CPU_BF16=0/1`` overrides it."""
    env = os.environ.get("EMBEDRAIL_CPU_BF16")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:  # not Linux
        pass
    return False


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def choose_placement(device: str = "auto", dtype: str | None = None, attn: str | None = None) -> Placement:
    """``auto``: CUDA when present (bf16 where supported else fp16; flash-attention-2 if installed,
    else SDPA), otherwise the CPU with SDPA: weights in fp32, and the packed paths' matrix products in
    bf16 where the CPU has native bf16 (``cpu_fast_bf16``), else fp32. ``dtype`` forces the precision
    (``"float32"`` everywhere). The device string is the only switch."""
    device = (device or "auto").lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' was asked for but Metal is not available; use device='cpu' or 'auto'")
    dev = torch.device(device)
    compute = None
    if dtype is not None:
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype must be float32, bfloat16 or float16; got {dtype!r}")
        torch_dtype = _DTYPES[dtype]
    elif dev.type == "cuda":
        torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        torch_dtype = torch.float32
        compute = torch.bfloat16 if cpu_fast_bf16() else None
    if attn is None:
        half = torch_dtype in (torch.bfloat16, torch.float16)
        attn = "flash_attention_2" if dev.type == "cuda" and half and flash_attn_available() else "sdpa"
    return Placement(dev, torch_dtype, attn, compute)


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
