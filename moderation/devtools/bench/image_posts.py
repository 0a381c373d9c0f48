"""`moderation bench --image-posts`: posts with images through the local stack (issue 16's target:
end-to-end latency at 20 image posts/s).

The API, the worker and the recorder run as processes on their own topics (`bench-<run>.*`);
posts with one ~1-megapixel JPEG each (the photos shipped in scikit-image and matplotlib, so
nothing downloads) go to `POST /v1/posts` one per request at the offered rate. Latency is the
stage-1 verdict row in PostgreSQL minus the post's submission, as in the pipeline bench: it
covers the API's decoding, sanitizing, hashing and storing, Kafka, the worker's hash matching
and nudity detector, and the recorder. One image in ten is on a hash list, so both the
fastest path (a hash match) and the detector's path are measured; they are reported apart.
"""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from moderation.db import crud
from moderation.db.engine import make_engine
from moderation.devtools.bench.e2e import prepare_run, wait_recorded
from moderation.devtools.bench.report import latency_percentiles, machine_info, write_result
from moderation.devtools.stack.kafka import delete_topics
from moderation.devtools.stack.services import PipelineServices
from moderation.images.intake import ImageLimits, prepare
from moderation.settings import Settings

LISTED_EVERY = 10  # one post in ten carries the listed photo


def _photos() -> list[bytes]:
    """~1 MP JPEGs of the photos shipped inside installed wheels (no download)."""
    import matplotlib
    import skimage

    data = Path(skimage.__file__).parent / "data"
    paths = [data / name for name in ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg")]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    photos = []
    for path in paths:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        scale = (1_000_000 / (image.width * image.height)) ** 0.5
        image = image.resize((int(image.width * scale), int(image.height * scale)))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=88)
        photos.append(out.getvalue())
    return photos


def _write_list(directory: Path, listed: bytes, settings: Settings) -> None:
    prepared = prepare(listed, ImageLimits.from_settings(settings.images))
    lists = directory / "violence"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "bench-listed.csv").write_text(f"kind,hash,note\npdq,{prepared.hashes.pdq},bench\n")


async def _offer(
    base_url: str, api_key: str, author: str, photos: list[bytes], rate: float, seconds: float
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Submit `rate` image posts/s for `seconds`; (listed ids, other ids, submit figures)."""
    encoded = [base64.b64encode(photo).decode() for photo in photos]
    listed_ids: list[str] = []
    other_ids: list[str] = []
    submit_ms: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as client:

        async def one(index: int) -> None:
            listed = index % LISTED_EVERY == 0
            # The listed photo is the last; the others rotate (the store keeps one copy each).
            image = encoded[-1] if listed else encoded[index % (len(encoded) - 1)]
            body = {
                "text": f"Pictures from the weekend #{index}",
                "author_id": author,
                "images": [{"data_base64": image}],
            }
            started = time.perf_counter()
            response = await client.post("/v1/posts", json=body)
            submit_ms.append((time.perf_counter() - started) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 202:
                (listed_ids if listed else other_ids).append(response.json()["post_id"])

        tasks = []
        started = time.perf_counter()
        total = int(rate * seconds)
        for index in range(total):
            tasks.append(asyncio.create_task(one(index)))
            await asyncio.sleep(max(0.0, started + (index + 1) / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    figures = {
        "offered": total,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "submit_latency_ms": latency_percentiles(submit_ms),
    }
    return listed_ids, other_ids, figures


def _split(
    settings: Settings, author: str, listed_ids: list[str], other_ids: list[str]
) -> dict[str, Any]:
    engine = make_engine(settings)
    try:
        with Session(engine) as session:
            timings = crud.verdict_timings(session, author_id=author, stage="model")
    finally:
        engine.dispose()
    listed = set(listed_ids)

    def latencies(keep: bool) -> list[float]:
        return [
            (recorded - submitted).total_seconds() * 1000
            for post_id, submitted, recorded in timings
            if (post_id in listed) is keep
        ]

    return {
        "hash_matched_latency_ms": latency_percentiles(latencies(True)),
        "detector_path_latency_ms": latency_percentiles(latencies(False)),
    }


def run_image_posts_bench(
    settings: Settings, *, rate: float, seconds: float, console: Console
) -> dict[str, Any]:
    run, run_settings, api_key = prepare_run(settings)
    # The run's own store and hash lists, removed afterwards.
    root = Path(tempfile.mkdtemp(prefix=f"moderation-bench-images-{run}-"))
    photos = _photos()
    _write_list(root / "hashlists", photos[-1], settings)
    result: dict[str, Any] = {
        "run": run,
        "machine": machine_info(),
        "started_at": datetime.now().astimezone().isoformat(),
        "offered_posts_per_second": rate,
        "seconds": seconds,
        "image_bytes": [len(photo) for photo in photos],
        "listed_every": LISTED_EVERY,
    }
    services = PipelineServices(
        run_settings,
        extra_env={
            "MODERATION_API__RATE_LIMIT_PER_MINUTE": "0",
            "MODERATION_API__REQUEST_RATE_LIMIT_PER_MINUTE": "0",
            "MODERATION_IMAGES__STORE__LOCAL_DIR": str(root / "store"),
            "MODERATION_IMAGES__HASHLIST_DIR": str(root / "hashlists"),
            # One decoder process per API CPU core.
            "MODERATION_IMAGES__DECODE_WORKERS": "2",
        },
    )
    author = f"bench-{run}-images"
    try:
        services.start("recorder", "worker", "api", timeout=600)
        console.print(f"[bold]image posts: {rate:g}/s offered for {seconds:g} s[/bold]")
        base_url = f"http://127.0.0.1:{run_settings.api.port}"
        listed_ids, other_ids, submitted = asyncio.run(
            _offer(base_url, api_key, author, photos, rate, seconds)
        )
        result["submit"] = submitted
        result["end_to_end"] = wait_recorded(
            run_settings, author, listed_ids + other_ids, timeout=300
        )
        result["by_path"] = _split(run_settings, author, listed_ids, other_ids)
    finally:
        services.stop()
        asyncio.run(delete_topics(run_settings))
        shutil.rmtree(root, ignore_errors=True)
    result["results_file"] = str(write_result(result, f"bench-image-posts-{{stamp}}-{run}.json"))
    return result


def render_image_posts(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Image posts at {result['offered_posts_per_second']:g}/s")
    table.add_column("measure")
    for column in ("p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="right")
    rows = {
        "submit (POST /v1/posts)": result["submit"]["submit_latency_ms"],
        "end to end, all": result["end_to_end"]["latency_ms"],
        "end to end, hash-matched": result["by_path"]["hash_matched_latency_ms"],
        "end to end, detector path": result["by_path"]["detector_path_latency_ms"],
    }
    for name, figures in rows.items():
        table.add_row(name, *(str(figures.get(k, "–")) for k in ("p50", "p95", "p99")))
    console.print(table)
    console.print(f"statuses {result['submit']['statuses']}; lost {result['end_to_end']['lost']}")
    console.print(f"results: {result['results_file']}")
