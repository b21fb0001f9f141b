"""What the method benchmarks print alike: a job's own clock per phase and the peak memory."""
from __future__ import annotations

import resource

import torch


def print_clock(label: str, clock: dict[str, float], total: float) -> None:
    """One row per phase of ``clock`` (seconds), then the whole job's ``total``."""
    print(f"{label:<14}{'seconds':>10}")
    for phase, seconds in clock.items():
        print(f"{phase:<14}{seconds:>10.2f}")
    print(f"{'total':<14}{total:>10.2f}")


def print_peak_memory(device: str) -> None:
    """This process's peak resident memory, and on CUDA the peak allocated GPU memory, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = f", GPU peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if device == "cuda" else ""
    print(f"peak RSS {peak:.0f} MiB{gpu}")
