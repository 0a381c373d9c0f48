"""One test process at a time may start or prepare a shared stack component.

`make test` runs two pytest processes side by side (`scripts/test-lanes`); both ensure the same
components at session start. Starting is idempotent but not concurrent: PostgreSQL refuses two
GRANTs on one role at once ("tuple concurrently updated"), and two checks of "is Kafka running?"
could both start it. An exclusive `flock` on a file in the stack's state directory serialises them.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager

from moderation.settings import Settings


@contextmanager
def one_process_at_a_time(settings: Settings) -> Iterator[None]:
    """Hold the stack's fixture lock (blocking) for the duration of the block."""
    path = settings.stack.state_dir / "test-fixtures.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
