"""Where a run executes: the device, the torchrun launch (read once per process), CPU features and the precision policy.

Every other module asks here instead of reading `RANK`/`WORLD_SIZE` or probing the CPU itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job (rank 0 of a world of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


@functools.cache
def launch() -> Launch:
    """torchrun's variables, read once per process."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return Launch()
    return Launch(
        int(env.get("RANK", "0")),
        int(env["WORLD_SIZE"]),
        int(env.get("LOCAL_RANK", "0")),
        int(env.get("LOCAL_WORLD_SIZE", "1")),
    )


def join_process_group(device_name: str) -> Launch:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU; a single process needs nothing) and
    return this process's `launch`."""
    here = launch()
    if not here.distributed:
        return here
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(here.local_rank)
    return here


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a `UserError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device {name}: use cpu, cuda, cuda:N or auto")
    return torch.device(name)


def rank_device(name: str = "auto") -> torch.device:
    """`resolve_device`, with one GPU per rank of a torchrun job (its local rank) when the device is CUDA."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and launch().distributed:
        return torch.device("cuda", launch().local_rank)
    return device


# --- CPU features and the precision policy ----------------------------------------------------------------------------


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU has AMX tiles: the only CPUs whose bfloat16 training steps are trusted (benchmarks/RESULTS.md
    §1). Asked once: the training autocast runs every step."""
    return _cpu_supports("amx_tile")


@functools.cache
def cpu_bf16_predicts_natively() -> bool:
    """Whether this CPU runs bfloat16 convolutions in hardware for prediction: AMX tiles, or AVX512-BF16 without them
    (benchmarks/RESULTS.md §13)."""
    return _cpu_supports("amx_tile") or _cpu_supports("avx512_bf16")


def _cpu_supports(feature: str) -> bool:
    """torch's probe of one CPU feature, by its flags (False where this torch has no such probe)."""
    check = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(check is not None and check())


def training_autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for a training step when mixed precision is asked for (`amp`) and the device runs bfloat16
    natively (CUDA; a CPU with AMX tiles)."""
    if not amp:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predicts_in_bf16(device: torch.device, precision: str, cpu_bf16_allowed: bool) -> bool:
    """Whether prediction runs under bfloat16 autocast: precision 'auto' on CUDA, or on a CPU with native bfloat16
    convolutions (`cpu_bf16_predicts_natively`) for a method whose quality was measured there (`cpu_bf16_allowed`)."""
    if precision != "auto":
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_bf16_allowed and cpu_bf16_predicts_natively()


def prediction_autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """The autocast a prediction runs under: bfloat16 when `bf16` (see `predicts_in_bf16`), else none."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
