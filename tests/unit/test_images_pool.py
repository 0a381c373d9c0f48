"""The decode pool: real worker processes, killed when over budget, never stalling the caller."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest

from moderation.images.intake import ImageLimits, ImageRejected, RejectCode, prepare
from moderation.images.pool import DecodePool, DecoderBusy, DecoderFailed
from tests.image_samples import encode, photo, png_of_zeros

LIMITS = ImageLimits(timeout_seconds=30.0)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """25 megapixels: a few hundred milliseconds to decode, re-encode and hash."""
    return encode(photo("retina").resize((5000, 5000)), "JPEG", quality=90)


@pytest.fixture
def pool() -> Iterator[DecodePool]:
    with DecodePool(LIMITS, workers=1, queue_seconds=30.0) as decode_pool:
        decode_pool.start()
        yield decode_pool


def test_the_pool_answers_what_prepare_answers(pool: DecodePool) -> None:
    upload = encode(photo("grace_hopper"), "JPEG")
    assert pool.prepare(upload) == prepare(upload, LIMITS)


def test_a_rejection_comes_back_and_the_worker_lives_on(pool: DecodePool) -> None:
    with pytest.raises(ImageRejected) as caught:
        pool.prepare(png_of_zeros(10_000, 10_000))
    assert caught.value.code is RejectCode.TOO_MANY_PIXELS
    assert "100,000,000 pixels" in caught.value.message
    with pytest.raises(ImageRejected) as caught:
        pool.prepare(b"%PDF-1.4 not an image")
    assert caught.value.code is RejectCode.UNSUPPORTED_FORMAT
    assert pool.kills == 0
    assert pool.prepare(encode(photo("coffee"), "PNG")).format == "png"


def test_over_the_budget_the_worker_is_killed_and_replaced(
    pool: DecodePool, big_jpeg: bytes
) -> None:
    pool.limits = dataclasses.replace(LIMITS, timeout_seconds=0.02)
    started = time.perf_counter()
    with pytest.raises(ImageRejected) as caught:
        pool.prepare(big_jpeg)
    assert time.perf_counter() - started < 2.0
    assert caught.value.code is RejectCode.TIMEOUT
    assert "longer than 0.02 s" in caught.value.message
    assert pool.kills == 1
    pool.limits = LIMITS
    assert pool.prepare(encode(photo("chelsea"), "JPEG")).width == 451  # a fresh worker


async def test_decoding_does_not_stall_the_event_loop(pool: DecodePool, big_jpeg: bytes) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    for _ in range(2):
        prepared = await pool.prepare_async(big_jpeg)
        assert (prepared.width, prepared.height) == (5000, 5000)
    busy = time.perf_counter() - started
    done.set()
    await ticker
    assert busy > 0.2  # the decoder really worked meanwhile
    assert len(gaps) > 10
    assert max(gaps) < 0.15, max(gaps)


def test_when_every_worker_is_busy_the_caller_is_told_so(big_jpeg: bytes) -> None:
    with DecodePool(LIMITS, workers=1, queue_seconds=0.05) as pool:
        pool.start()
        holder = threading.Thread(target=pool.prepare, args=(big_jpeg,))
        holder.start()
        deadline = time.monotonic() + 10
        while not pool._slots.empty():  # wait until the holder has taken the only worker
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(DecoderBusy, match="busy"):
            pool.prepare(encode(photo("coffee"), "JPEG"))
        holder.join()


def test_a_closed_pool_refuses_work() -> None:
    pool = DecodePool(LIMITS)
    pool.close()
    with pytest.raises(DecoderFailed, match="closed"):
        pool.prepare(b"anything")


def test_a_worker_killed_while_idle_is_replaced(pool: DecodePool) -> None:
    upload = encode(photo("coffee"), "JPEG")
    first = pool.prepare(upload)
    # Reach in to kill the worker as the kernel's OOM killer would.
    (worker,) = pool._all
    worker.process.kill()
    worker.process.join()
    assert pool.prepare(upload) == first
    assert len(pool._all) == 1 and worker not in pool._all
