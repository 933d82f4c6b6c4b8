"""One ruler for every trainer: peak memory, wall time and pass counts of a local update.

Peak memory is the peak over the measured block only: on CUDA the allocator's
peak after ``reset_peak_memory_stats``; on Linux CPUs the process's peak RSS
(``VmHWM``) after resetting it through ``/proc/self/clear_refs``. Where the
reset is not permitted the value is the process-lifetime peak, and
:attr:`Meter.peak_scope` says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_cpu_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak RSS counter (proc(5))
    except OSError:
        return False
    return True


def _cpu_peak_mb() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Meter:
    """Measures one local update: ``with meter: ...``, then read the fields."""

    device: torch.device
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    peak_mem_mb: float = 0.0
    peak_scope: str = field(default="update")
    _t0: float = 0.0

    def __enter__(self) -> Meter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif not _reset_cpu_peak():
            self.peak_scope = "process"
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mem_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mem_mb = _cpu_peak_mb()
        self.seconds = time.perf_counter() - self._t0


@dataclass(frozen=True, slots=True)
class StepCost:
    """FLOPs and peak memory of one local step (docs/evaluation.md (Metrics))."""

    flops: int  # torch.utils.flop_counter.FlopCounterMode total (matmuls and convolutions)
    peak_mem_mb: float  # live tensor memory at the step's peak, MiB (whole update)
    scope: str  # "cuda-allocator" or "cpu-profiler"
    step_mem_mb: float = math.nan  # the step's own peak above what was live when it began
    reserved_mb: float = math.nan  # CUDA: the caching allocator's peak reservation


def tensor_mb(tensors: Iterable[torch.Tensor]) -> float:
    """MiB held by ``tensors`` (parameters, buffers, optimizer state, a batch)."""
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _profiled_peak_bytes(prof: torch.profiler.profile) -> int:
    """Highest running sum of CPU allocations minus frees over the profiled block."""
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    records = [
        (ev.start_ns(), ev.nbytes())  # nbytes < 0 for a free
        for ev in prof.profiler.kineto_results.events()
        if ev.name() == "[memory]"
    ]
    running = peak = 0
    for _, delta in sorted(records, key=lambda r: r[0]):
        running += delta
        peak = max(peak, running)
    return peak


def step_cost(step: Callable[[], object], device: torch.device, resident_mb: float) -> StepCost:
    """Run ``step`` once and measure its FLOPs and peak memory, the same way for every trainer.

    CUDA: the allocator's peak after a reset (everything live on the device:
    parameters, optimizer state, the batch, the step's own tensors), its peak
    reservation, and the step-only delta above the memory allocated when it began.
    CPU: ``resident_mb`` (what lives before the step: parameters, buffers,
    optimizer state, the batch) plus the PyTorch profiler's peak of the step's
    own allocations net of frees, docs/evaluation.md (Metrics)'s "profiler memory accounting".
    FLOPs come from ``FlopCounterMode``, which counts matrix multiplications and
    convolutions (forward and backward), not element-wise ops or RNG.
    """
    with FlopCounterMode(display=False) as counter:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
            step()
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            reserved = torch.cuda.max_memory_reserved(device) / 2**20
            return StepCost(int(counter.get_total_flops()), peak / 2**20, "cuda-allocator",
                            (peak - start) / 2**20, reserved)
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            step()
        own = _profiled_peak_bytes(prof) / 2**20
    return StepCost(int(counter.get_total_flops()), resident_mb + own, "cpu-profiler", own)
