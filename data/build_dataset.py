"""Build the fast model's labelled dataset (cached): `python data/build_dataset.py`.

A thin entry point; the logic is `moderation.datasets.build.build_dataset`. Prints where the
dataset is and its counts per category and split (see `data/README.md`).
"""

from __future__ import annotations

import json
import sys
import time

from rich.table import Table

from moderation.cache import console
from moderation.datasets.build import SPLITS, build_dataset
from moderation.datasets.sources import DatasetError
from moderation.settings import get_settings
from moderation.taxonomy import CATEGORIES


def main() -> int:
    started = time.monotonic()
    try:
        dataset_dir = build_dataset(get_settings().stack.cache_dir)
    except DatasetError as error:
        console.print(f"[red]error:[/red] {error}")
        return 1
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    table = Table(title=f"dataset {dataset_dir.name} (built {manifest['built_at']})")
    table.add_column("category")
    for name in (*SPLITS, "total"):
        table.add_column(name, justify="right")
    for category in CATEGORIES:
        counts = [str(manifest["counts"][name][category.value]) for name in (*SPLITS, "total")]
        table.add_row(category.value, *counts)
    console.print(table)
    console.print(f"{dataset_dir} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
