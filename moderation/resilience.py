"""A circuit breaker: after N consecutive failures, stop calling a dependency for a while.

Closed → (N failures in a row) → open: `allow()` is False until `reset_seconds` pass → half-open:
one trial call is let through; its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def ready(self) -> bool:
        """Would `allow()` let a call through now? (Asking takes no half-open trial slot.)"""
        if self.opened_at is None:
            return True
        return self.clock() - self.opened_at >= self.reset_seconds and not self._trial_in_flight

    def seconds_until_trial(self) -> float:
        """How long until an open breaker lets a trial call through (0 when closed)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.reset_seconds - self.clock())

    def allow(self) -> bool:
        """May a call go through now? (In half-open state, only one trial at a time.)"""
        if self.opened_at is None:
            return True
        if self.clock() - self.opened_at < self.reset_seconds or self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self.consecutive_failures = 0
        self.opened_at = None
        self._trial_in_flight = False

    def release(self) -> None:
        """The call ended without saying anything about the service: free a half-open trial
        slot, count nothing."""
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self.consecutive_failures += 1
        self._trial_in_flight = False
        if self.opened_at is not None or self.consecutive_failures >= self.threshold:
            self.opened_at = self.clock()
