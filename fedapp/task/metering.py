"""One ruler for every trainer: peak memory, wall time and pass counts of a local update.

Peak memory is the peak over the measured block only: on CUDA the allocator's
peak after ``reset_peak_memory_stats``; on Linux CPUs the process's peak RSS
(``VmHWM``) after resetting it through ``/proc/self/clear_refs``. Where the
reset is not permitted the value is the process-lifetime peak, and
:attr:`Meter.peak_scope` says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
