"""Registry paths are confined to the artifact store; artifacts are checked against a digest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moderation.classifier.artifacts import (
    ArtifactRefused,
    artifact_digest,
    check_digest,
    confine,
    digest_of,
    load_checked,
    read_artifact,
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    artifact = tmp_path / "store" / "fast-1"
    (artifact / "sub").mkdir(parents=True)
    (artifact / "metadata.json").write_text('{"version": "fast-1"}')
    (artifact / "model.npz").write_bytes(b"arrays")
    (artifact / "sub" / "extra").write_bytes(b"more")
    return tmp_path / "store"


# --- confinement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["plain", "file-uri", "relative"])
def test_a_path_inside_the_store_is_accepted(store: Path, form: str) -> None:
    uri = {
        "plain": str(store / "fast-1"),
        "file-uri": f"file://{store}/fast-1",
        "relative": "fast-1",
    }
    assert confine(uri[form], store) == (store / "fast-1").resolve()


def test_a_missing_path_inside_the_store_is_returned_to_fail_as_missing(store: Path) -> None:
    path = confine(str(store / "fast-2"), store)
    with pytest.raises(FileNotFoundError):
        read_artifact(path)


@pytest.mark.parametrize(
    "uri",
    [
        "/etc",
        "/tmp/evil",
        "{store}/../evil",
        "{store}/fast-1/../../evil",
        "../evil",
        "{store}",
        "{store}/",
        "",
        "s3://bucket/fast-1",
        "http://evil.example/fast-1",
        "{store}/fast-1\x00",
    ],
)
def test_a_path_outside_the_store_is_refused(store: Path, uri: str) -> None:
    with pytest.raises(ArtifactRefused) as refused:
        confine(uri.format(store=store), store)
    assert refused.value.reason == "outside"


def test_a_sibling_whose_name_extends_the_stores_is_outside(store: Path) -> None:
    sibling = store.parent / (store.name + "-evil")
    sibling.mkdir()
    with pytest.raises(ArtifactRefused):
        confine(str(sibling), store)


def test_a_symlink_in_the_store_that_leads_out_is_refused(store: Path, tmp_path: Path) -> None:
    (tmp_path / "evil").mkdir()
    (store / "fast-evil").symlink_to(tmp_path / "evil")
    with pytest.raises(ArtifactRefused, match="outside the store"):
        confine(str(store / "fast-evil"), store)


def test_a_symlink_inside_the_store_that_stays_inside_is_followed(store: Path) -> None:
    (store / "latest").symlink_to(store / "fast-1")
    assert confine(str(store / "latest"), store) == (store / "fast-1").resolve()


def test_a_store_reached_through_a_symlink_still_confines(store: Path, tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(store)
    linked = tmp_path / "models"
    assert confine(str(linked / "fast-1"), linked) == (store / "fast-1").resolve()
    with pytest.raises(ArtifactRefused):
        confine(str(tmp_path), linked)


# --- reading and digests -------------------------------------------------------------------------


def test_every_file_is_read_by_its_relative_path(store: Path) -> None:
    files = read_artifact(store / "fast-1")
    assert files == {
        "metadata.json": b'{"version": "fast-1"}',
        "model.npz": b"arrays",
        "sub/extra": b"more",
    }


def test_a_symlinked_file_inside_an_artifact_is_refused(store: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside")
    (store / "fast-1" / "model.npz").unlink()
    (store / "fast-1" / "model.npz").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactRefused, match="symbolic link"):
        read_artifact(store / "fast-1")


def test_a_fifo_inside_an_artifact_is_refused(store: Path) -> None:
    os.mkfifo(store / "fast-1" / "pipe")
    with pytest.raises(ArtifactRefused, match="not a regular file"):
        read_artifact(store / "fast-1")


def test_the_digest_is_canonical_and_covers_names_and_contents(store: Path) -> None:
    files = read_artifact(store / "fast-1")
    digest = artifact_digest(store / "fast-1")
    assert len(digest) == 64 and digest == digest_of(dict(reversed(list(files.items()))))
    assert digest_of(files | {"model.npz": b"arrayz"}) != digest
    assert digest_of(files | {"added": b""}) != digest
    renamed = {("model2.npz" if k == "model.npz" else k): v for k, v in files.items()}
    assert digest_of(renamed) != digest


def test_check_digest_refuses_a_mismatch_and_a_missing_digest(store: Path) -> None:
    files = read_artifact(store / "fast-1")
    check_digest(files, digest_of(files).upper(), where="fast-1")  # hex case does not matter
    for expected in (None, "", "0" * 64):
        with pytest.raises(ArtifactRefused) as refused:
            check_digest(files, expected, where="fast-1")
        assert refused.value.reason == "digest"


def test_load_checked_confines_then_checks(store: Path, tmp_path: Path) -> None:
    digest = artifact_digest(store / "fast-1")
    path, files = load_checked("fast-1", store, digest)
    assert path == (store / "fast-1").resolve() and "model.npz" in files
    (store / "fast-1" / "model.npz").write_bytes(b"tampered")
    with pytest.raises(ArtifactRefused, match="not the registered"):
        load_checked("fast-1", store, digest)
    with pytest.raises(ArtifactRefused, match="outside"):
        load_checked(str(tmp_path), store, digest)
