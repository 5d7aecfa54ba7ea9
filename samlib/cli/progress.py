"""A one-line progress bar on stderr, for downloads (bytes) and segment everything (points)."""

from __future__ import annotations

import sys
import time

__all__ = ["ProgressBar"]


class ProgressBar:
    """A one-line progress bar on stderr (bytes or items)."""

    def __init__(self, label: str, unit: str = "", enabled: bool = True) -> None:
        self.label, self.unit, self.enabled = label, unit, enabled
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done != total):
            return
        self.last = now
        scale, unit = (1e6, " MB") if self.unit == "B" else (1, "")
        rate = done / scale / max(now - self.start, 1e-6)
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            amount = f"{done / scale:.1f}/{total / scale:.1f}{unit}"
            text = f"{self.label} [{bar:<30}] {100 * frac:5.1f}% {amount}"
        else:
            text = f"{self.label} {done / scale:.1f}{unit}"
        sys.stderr.write(f"\r{text}  {rate:.1f}{unit}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
