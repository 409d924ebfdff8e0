"""Wall-clock timing with device synchronisation (the runner's job, never a decoder's)."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a clock reading covers the work issued before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Times one generation: start -> prefill done (TTFT) -> end.

    ``mark_prefill`` is handed to the engine as ``on_prefill_done``; it synchronises the
    device so TTFT includes the prefill kernels.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.t_start = self.t_prefill = self.t_end = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self.t_start = self.t_prefill = time.perf_counter()

    def mark_prefill(self) -> None:
        synchronize(self.device)
        self.t_prefill = time.perf_counter()

    def stop(self) -> None:
        synchronize(self.device)
        self.t_end = time.perf_counter()

    @property
    def ttft_s(self) -> float:
        return self.t_prefill - self.t_start

    @property
    def decode_s(self) -> float:
        """Time after the prefill (the first token comes with the prefill)."""
        return self.t_end - self.t_prefill

    @property
    def total_s(self) -> float:
        return self.t_end - self.t_start
