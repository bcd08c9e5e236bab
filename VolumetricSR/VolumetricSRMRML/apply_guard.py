"""Apply turns into Cancel while a run goes: a double click on Apply must not cancel the run its first
click started. The panel asks this guard before it treats a click as Cancel (no Qt here, so that the
rule is tested without a GUI)."""

from __future__ import annotations

ARM_SECONDS = 1.0
"""How long after a start Cancel stays disarmed: longer than any double click (Windows' default
double-click time is 0.5 s, the longest it can be set to 0.9 s)."""


class ApplyGuard:
    """Remembers when the last run started; `cancel_allowed(now)` is false for ARM_SECONDS after it."""

    def __init__(self, arm_seconds: float = ARM_SECONDS) -> None:
        self.arm_seconds = arm_seconds
        self._started: float | None = None

    def started(self, now: float) -> None:
        """A run started at `now` (seconds of a monotonic clock)."""
        self._started = now

    def cancel_allowed(self, now: float) -> bool:
        """True when a click at `now` is a deliberate Cancel, not the second click of the one that started."""
        return self._started is None or now - self._started >= self.arm_seconds
