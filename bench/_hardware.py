"""The machine's own ceilings, measured in the same run as the benchmark (no datasheets).

memory bandwidth: a large on-device tensor copy (read + write bytes / time);
matmul rate: a large square matmul in the benchmark's dtype (2 n^3 / time).
"""

from __future__ import annotations

import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bandwidth_gbs(device: torch.device, mib: int = 1024, repeats: int = 5) -> float:
    n = mib * 2**20 // 4
    a = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        b.copy_(a)
    sync(device)
    return 2 * a.numel() * 4 * repeats / (time.perf_counter() - t) / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    if device.type == "cpu":
        n = min(n, 2048)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{model}, {torch.get_num_threads()} threads"
