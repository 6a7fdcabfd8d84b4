"""The numeric precision of the model passes: --precision auto|fp32|bf16|fp16.

A Labeler runs its method and SAM under `autocast(device, precision)`; the methods keep what
must stay exact in fp32 with `full_precision()` (each place says why). `auto` is bf16 where the
device computes it natively (a CPU with AVX512-BF16 or AMX, a GPU that supports bf16), fp16 on
GPUs without bf16, and fp32 everywhere else and under --parity (the official code's numbers).
On a CPU without bf16 instructions torch emulates bf16, several times slower than fp32: `auto`
never picks it there, and an explicit `bf16` runs but says so in the run's warnings.
"""

from __future__ import annotations

import contextlib

import torch

from autolabel.errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(requested: str, device: torch.device, parity: bool = False) -> str:
    """The precision a run uses on a device (requested: one of config.PRECISIONS, checked by
    config.resolve_method): `auto` resolved, impossible requests refused."""
    if parity and requested not in ("auto", "fp32"):
        raise UsageError(
            f"--parity reproduces the official code in fp32; drop --precision {requested}"
        )
    if requested == "auto":
        if parity:
            return "fp32"
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise UsageError("--precision fp16 runs on GPUs only; on CPU use bf16 or fp32")
    return requested


def slow_precision_note(precision: str, device: torch.device) -> str:
    """A warning for bf16 on a CPU that only emulates it ("" otherwise)."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        return (
            "--precision bf16: this CPU has no bf16 instructions, so torch emulates them "
            "(several times slower than fp32); --precision auto picks fp32 here"
        )
    return ""


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the model passes run in: torch.autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Run a block in fp32 inside an autocast region (its inputs must be cast with .float())."""
    return torch.autocast(device.type, enabled=False)
