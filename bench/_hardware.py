"""The machine's own ceilings, measured in the same run as the benchmark (no datasheets).

memory bandwidth: a large on-device tensor copy (read + write bytes / time);
matmul rate: a large square matmul in the benchmark's dtype (2 n^3 / time).

Each is the best of several repeats timed one by one, not the mean of their total time: a
roofline is a bound the measured steps cannot beat, so it takes the fastest rate the machine
showed. On the shared 2-core CPU the mean was pulled down by whichever neighbour ran during
the ~0.1 s it took (one run measured 0.58 TFLOP/s against 0.82-0.89 in the others, 2026-12-06),
which made the roofline 40% slower and a step look at 83% of it instead of about 58%.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bandwidth_gbs(device: torch.device, mib: int = 1024, repeats: int = 7) -> float:
    n = mib * 2**20 // 4
    a = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    return 2 * a.numel() * 4 / _best(lambda: b.copy_(a), device, repeats) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 10) -> float:
    if device.type == "cpu":
        n = min(n, 2048)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync(device)
    return 2 * n**3 / _best(lambda: a @ b, device, repeats) / 1e12


def _best(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The shortest of ``repeats`` timed runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {torch.get_num_threads()} threads"
