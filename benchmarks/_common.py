"""Helpers shared by the benchmarks (run them as scripts: python benchmarks/NAME.py)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch


class PeakMemory:
    """Peak memory during a block: CUDA's allocator statistics, or sampled resident-memory growth on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _release_freed_memory()  # else reused allocator memory shows no growth at all
            self.base = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *_: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.running = False
            self.thread.join()


def _release_freed_memory() -> None:
    """Return memory that glibc keeps after frees to the OS, so RSS growth measures new allocations."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def ns_train(method: str, output: Path, *flags: str | Path, prompts: Sequence[str]) -> tuple[Path, float]:
    """``ns-train METHOD`` on the CPU with ``prompts`` (``--prompt-src ... --prompt-trg ...``); the run's folder and
    its wall time. A finished run already in ``output`` is reused (its time as recorded then), so that further rows
    can be added to a benchmark's runs."""
    done = list(output.rglob("seconds.txt"))
    if done:
        return done[0].parent, float(done[0].read_text())
    command = [sys.executable, "-m", "nerfstudio.scripts.train", method, "--machine.device-type", "cpu",
               "--vis", "tensorboard", *prompts, "--output-dir", str(output), *map(str, flags)]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stderr[-3000:]}")
    (config,) = output.rglob("config.yml")
    seconds = time.perf_counter() - start
    (config.parent / "seconds.txt").write_text(f"{seconds:.1f}")
    return config.parent, seconds
