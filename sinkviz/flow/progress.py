"""How far a long run is and how long it has left, as the line a user reads.

A run reports the work it has done out of its total (layers, prompts, token-layers). The time
left is the rate so far held constant: elapsed x (total - done) / done. Store hits at the start
of a resumed run make that rate optimistic until fresh work dominates.
"""

import time
from dataclasses import dataclass
from typing import Callable


def clock() -> float:
    """Seconds on a monotonic clock (tests replace it)."""
    return time.perf_counter()


@dataclass(frozen=True)
class Tick:
    """Where a run stands: ``fraction`` of its work done (0..1) and the line a user reads."""
    fraction: float
    text: str


Ticks = Callable[[Tick], None]


class Eta:
    """The time left of one run, from its start (this object's creation) and the work done."""

    def __init__(self, now: Callable[[], float] | None = None):
        self.now = now or clock
        self.start = self.now()

    def elapsed(self) -> float:
        return self.now() - self.start

    def left(self, done: float, total: float) -> float | None:
        """Seconds left at the rate so far; None before any work is done or time has passed."""
        elapsed = self.elapsed()
        if done <= 0 or elapsed <= 0:
            return None
        return elapsed * max(total - done, 0.0) / done


def left_text(seconds: float | None) -> str:
    """'~12 s left', '~4 min left', '~1 h 20 min left'; '' when unknown or nothing is left."""
    if seconds is None or seconds <= 0:
        return ""
    if seconds < 59.5:
        return f"~{max(1, round(seconds))} s left"
    minutes = round(seconds / 60)
    return f"~{minutes} min left" if minutes < 60 else f"~{minutes // 60} h {minutes % 60} min left"


def line(*parts: str) -> str:
    """The non-empty parts joined with ' · '."""
    return " · ".join(part for part in parts if part)


def count_line(noun: str, done: int, total: int, seconds: float | None) -> str:
    """'layer 17/30 · ~12 s left'."""
    return line(f"{noun} {done}/{total}", left_text(seconds))


def fraction_line(what: str, fraction: float, seconds: float | None) -> str:
    """'window KV cache 42 % · ~5 min left'."""
    return line(f"{what} {100 * fraction:.0f} %", left_text(seconds))


def rate_line(noun: str, done: int, total: int, elapsed: float, unit: str) -> str:
    """'prompt 48/200 · 3.1 prompts/s · ~49 s left': ``done`` of ``total`` after ``elapsed`` seconds."""
    if done <= 0 or elapsed <= 0:
        return f"{noun} {done}/{total}"
    rate = done / elapsed
    return line(f"{noun} {done}/{total}", f"{rate:.3g} {unit}/s", left_text((total - done) / rate))
