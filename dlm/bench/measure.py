"""Measuring a stretch of work: CUDA synchronisation, peak memory (CUDA or the process's resident set) and the
machine's load average."""

from __future__ import annotations

import os
import sys

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a stretch of work: CUDA max allocated, or the CPU process's peak RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_peak"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux >= 4.0: "5" resets the peak resident set size (VmHWM) of the process
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.kind = "cpu_rss_peak"
        except OSError:
            self.kind = "cpu_rss_peak_since_start"

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.kind = "cpu_rss_peak_since_start"
            return rss / 2**20 if sys.platform == "darwin" else rss / 1024
        except (ImportError, OSError):
            return None


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (other jobs competing for the CPU), where the OS tells."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
