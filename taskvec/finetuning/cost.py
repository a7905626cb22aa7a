"""What a fine-tune costs: wall time, the median step time and the peak memory it adds.

Peak memory on CUDA is torch's own counter (`max_memory_allocated` above the memory allocated
when the fine-tune starts). On the CPU torch's allocations are invisible to tracemalloc, so the
kernel's count is read instead: the process's resident-set high-water mark (VmHWM) is reset
to the current size when the fine-tune starts (`/proc/self/clear_refs`), and the peak is VmHWM
minus the resident size at that moment; before that, glibc's `malloc_trim` hands memory freed
by earlier work back to the kernel, else a fine-tune could reuse it without raising the mark. It counts everything the process allocates meanwhile
(the prefetch thread's batch, the allocator's slack), so compare it between modes of one run,
not across machines. Where /proc cannot be reset (not Linux) the peak is None.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import torch

MIB = 2**20


class CostSummary(TypedDict):
    """`CostMeter.summary()`: the measured fields of `taskvec.results.FinetuneCost`."""

    seconds: float
    step_ms: float | None
    peak_mib: float | None
    memory: str


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Return the allocator's free memory to the kernel (glibc's malloc_trim), so that the resident
    size counts live memory and a later peak is not hidden by memory freed before it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class CostMeter:
    """Times steps and tracks the peak memory of one fine-tune on `device`."""

    device: torch.device
    steps: list[float] = field(default_factory=list)
    _baseline: int | None = None
    _started: float = 0.0
    _step_started: float = 0.0

    def start(self) -> CostMeter:
        self._started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_memory()
            rss = _status_bytes("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
                self._baseline = rss
            except OSError:
                self._baseline = None
        return self

    def step_begins(self) -> None:
        self._step_started = time.perf_counter()

    def step_ends(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.steps.append(time.perf_counter() - self._step_started)

    def peak_bytes(self) -> int | None:
        if self._baseline is None:
            return None
        if self.device.type == "cuda":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self._baseline)
        peak = _status_bytes("VmHWM")
        return None if peak is None else max(0, peak - self._baseline)

    def summary(self) -> CostSummary:
        """What was measured, as fields of `taskvec.results.FinetuneCost`."""
        peak = self.peak_bytes()
        return {
            "seconds": round(time.perf_counter() - self._started, 2),
            "step_ms": round(1000 * statistics.median(self.steps), 2) if self.steps else None,
            "peak_mib": round(peak / MIB, 1) if peak is not None else None,
            "memory": "cuda allocated" if self.device.type == "cuda" else "resident set",
        }
