"""`moderation eval --images DIR`: the image stage on a labelled image dataset, with the packaged
photos (nothing downloads). A near-copy of a listed photo is removed in the list's category;
the other safe photos are sent on, never removed; bad rows and refused files are said clearly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from moderation.classifier.image_stage import ImageJudge
from moderation.cli import app
from moderation.evaluation.images import evaluate_images
from moderation.images.intake import ImageLimits, prepare
from moderation.images.store import LocalImageStore
from moderation.settings import Settings, get_settings
from tests.image_samples import photo


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Four images (one listed near-copy, two safe photos, one corrupt) and a hash list."""
    data = tmp_path / "data"
    data.mkdir()
    portrait = photo("grace_hopper")
    (data / "listed.jpg").write_bytes(jpeg(portrait.resize((384, 450))))
    (data / "coffee.jpg").write_bytes(jpeg(photo("coffee")))
    (data / "chelsea.jpg").write_bytes(jpeg(photo("chelsea")))
    (data / "broken.jpg").write_bytes(jpeg(photo("rocket"))[:300])
    (data / "labels.csv").write_text(
        "file,label\nlisted.jpg,violence\ncoffee.jpg,safe\nchelsea.jpg,safe\nbroken.jpg,safe\n"
    )
    lists = tmp_path / "hashlists" / "violence"
    lists.mkdir(parents=True)
    listed = prepare(jpeg(portrait), ImageLimits.from_settings(Settings().images))
    (lists / "known.csv").write_text(f"kind,hash,note\npdq,{listed.hashes.pdq},\n")
    return data, tmp_path / "hashlists"


def test_each_label_is_counted_through_intake_lists_and_never_an_allow(
    dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    data, hashlists = dataset
    settings = Settings()
    settings.images.hashlist_dir = hashlists
    judge = ImageJudge(settings, store=LocalImageStore(tmp_path / "store"), detector=None)
    result = evaluate_images(data, settings, judge)
    rows = {row.label: row for row in result.per_label}
    violence, safe = rows["violence"], rows["safe"]
    assert (violence.images, violence.removed, violence.hash_matched) == (1, 1, 1)
    assert violence.removed_as == {"violence": 1}
    assert (safe.images, safe.removed, safe.sent_on, safe.refused) == (3, 0, 2, 1)
    assert safe.false_positives == 0
    assert list(result.refusals) == ["broken.jpg"]


def test_the_command_answers_json_and_names_a_bad_label(
    dataset: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, hashlists = dataset
    monkeypatch.setenv("MODERATION_IMAGES__HASHLIST_DIR", str(hashlists))
    monkeypatch.setenv("MODERATION_NUDITY__ENABLED", "false")
    get_settings.cache_clear()
    try:
        answer = CliRunner().invoke(app, ["eval", "--images", str(data), "--json"])
        assert answer.exit_code == 0, answer.output
        assert json.loads(answer.output)["images"] == 4
        (data / "labels.csv").write_text("file,label\ncoffee.jpg,kittens\n")
        refused = CliRunner().invoke(app, ["eval", "--images", str(data)])
        assert refused.exit_code != 0
        assert "unknown label 'kittens'" in refused.output
    finally:
        get_settings.cache_clear()
