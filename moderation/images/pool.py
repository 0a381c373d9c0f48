"""Decoding uploads out of the caller's process, under a time budget (`DecodePool`).

Why processes and not threads. A decoder stuck in C code on a pathological file, or busy with
a bomb that got past the pixel check, cannot be stopped from Python when it runs in a thread:
the thread keeps its core and its memory until Pillow returns, and a few such uploads take a
service down. A process can be killed: when `decode_timeout_seconds` passes, the worker that
holds the upload is sent SIGKILL, the upload is refused (`timeout`), its memory returns to the
system, and a fresh worker starts for the next upload. The costs: the upload's bytes and the
sanitized result cross a pipe (a copy, about a millisecond per megabyte), each worker holds its
own Pillow, numpy and pdqhash (some 60 MB), and a replacement takes about half a second to
start. Workers are started with `spawn`, not `fork`: the API and the worker run Kafka client
threads, which a fork would copy in an undefined state.

Each worker holds one upload at a time, so a kill loses nobody else's work. Callers that find
every worker busy wait up to `decode_queue_seconds` for one, then get `DecoderBusy` (a 503:
the service is saturated, the upload is not at fault). The wait for a worker does not count
against the upload's own budget.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from moderation.images.intake import ImageLimits, ImageRejected, PreparedImage, RejectCode, prepare

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from moderation.settings import ImageSettings

STARTUP_SECONDS = 60.0
_READY = "ready"


class DecoderBusy(RuntimeError):
    """No decoder became free in time: the service is saturated (503, retry later)."""


class DecoderFailed(RuntimeError):
    """The decoder failed for a reason that is not the upload's (a bug, not a 4xx)."""


def _serve(conn: Connection) -> None:
    """A worker's loop: one upload in, one answer out, until the pipe closes."""
    conn.send(_READY)
    while True:
        try:
            data, limits = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", prepare(data, limits)))
        except ImageRejected as rejected:
            conn.send(("rejected", rejected))
        except Exception as error:  # noqa: BLE001 - reported to the caller, the worker lives on
            conn.send(("error", f"{type(error).__name__}: {error}"))


class _Worker:
    def __init__(self, context: Any) -> None:
        parent, child = context.Pipe()
        self.process: BaseProcess = context.Process(
            target=_serve, args=(child,), name="image-decoder", daemon=True
        )
        self.process.start()
        child.close()
        self.conn: Connection = parent
        if not parent.poll(STARTUP_SECONDS) or parent.recv() != _READY:
            self.kill()
            raise DecoderFailed("an image decoder process did not start")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class DecodePool:
    """Worker processes that run `intake.prepare` under the limits' time budget.

    Thread-safe; `prepare` blocks the calling thread, `prepare_async` does not block the loop.
    Workers start on first use (or `start()`), and `close()` stops them.
    """

    def __init__(
        self, limits: ImageLimits, *, workers: int = 1, queue_seconds: float = 10.0
    ) -> None:
        if workers < 1:
            raise ValueError("a decode pool needs at least one worker")
        self.limits = limits
        self.queue_seconds = queue_seconds
        self._context = multiprocessing.get_context("spawn")
        # A slot is a running worker, or None: start one when it is taken.
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.kills = 0
        self._waiters = ThreadPoolExecutor(
            max_workers=max(32, 4 * workers), thread_name_prefix="image-decode-wait"
        )
        for _ in range(workers):
            self._slots.put(None)

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> DecodePool:
        return cls(
            ImageLimits.from_settings(settings),
            workers=settings.decode_workers,
            queue_seconds=settings.decode_queue_seconds,
        )

    def start(self) -> None:
        """Start every worker now (a service's startup), rather than on the first upload."""
        taken = []
        while True:
            try:
                taken.append(self._slots.get_nowait())
            except queue.Empty:
                break
        for slot in taken:
            self._slots.put(slot if slot is not None else self._spawn())

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context)
        with self._lock:
            self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def prepare(self, data: bytes) -> PreparedImage:
        """Sanitize and hash `data` in a worker within `limits.timeout_seconds`.

        Raises:
            ImageRejected: the upload breaks a limit, is corrupt, or is over the budget.
            DecoderBusy: no worker was free within `queue_seconds`.
            DecoderFailed: the pool is closed or a worker failed for its own reasons.
        """
        if self._closed:
            raise DecoderFailed("the decode pool is closed")
        try:
            slot = self._slots.get(timeout=self.queue_seconds)
        except queue.Empty:
            raise DecoderBusy(
                f"every image decoder stayed busy for {self.queue_seconds:g} s"
            ) from None
        worker: _Worker | None = None
        try:
            if slot is not None and not slot.process.is_alive():
                self._retire(slot)  # died while idle (killed from outside): replace it
                slot = None
            worker = slot if slot is not None else self._spawn()
            status, payload = self._exchange(worker, data)
        except BaseException:
            # Killed, crashed or interrupted mid-upload: its state is unknown, never reuse it.
            if worker is not None:
                self._retire(worker)
            worker = None
            raise
        finally:
            self._slots.put(worker)
        if status == "ok":
            assert isinstance(payload, PreparedImage)
            return payload
        if status == "rejected":
            assert isinstance(payload, ImageRejected)
            raise payload
        raise DecoderFailed(f"the image decoder failed: {payload}")

    def _exchange(self, worker: _Worker, data: bytes) -> tuple[str, object]:
        budget = self.limits.timeout_seconds
        try:
            worker.conn.send((data, self.limits))
            if not worker.conn.poll(budget):
                self.kills += 1
                raise ImageRejected(
                    RejectCode.TIMEOUT,
                    f"decoding the image took longer than {budget:g} s; it was stopped",
                )
            status, payload = worker.conn.recv()
        except (EOFError, OSError) as error:
            if self._closed:
                raise DecoderFailed("the decode pool was closed during this upload") from error
            # The worker died on this upload (the kernel's OOM killer, a crash in C code).
            raise ImageRejected(
                RejectCode.CORRUPT, "the image decoder died on this image; it cannot be read"
            ) from error
        return str(status), payload

    async def prepare_async(self, data: bytes) -> PreparedImage:
        """`prepare` for the event loop: the wait happens in a thread, the work in a process.

        The waiting threads are the pool's own, so uploads queued for a decoder never take the
        loop's default executor from the service's other blocking calls.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._waiters, self.prepare, data)

    def close(self) -> None:
        """Stop every worker (idle or busy); later calls fail with `DecoderFailed`."""
        self._closed = True
        self._waiters.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
