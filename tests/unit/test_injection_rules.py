"""The injection screen's rule tables: they ship with the package, and a malformed file fails
loudly, naming the file and the entry at fault."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import pytest

from moderation.classifier.injection.rules import (
    DISGUISES,
    MATCHED_TECHNIQUES,
    RULE_TABLES,
    RULES,
    SCRIPT_RULES,
    RuleFileError,
    load_rule_tables,
)


def test_the_tables_are_package_data() -> None:
    folder = resources.files("moderation.classifier.injection") / "rule_tables"
    names = {entry.name for entry in folder.iterdir()}
    assert {"fragments.yaml", "disguises.yaml", "ignore_instructions.yaml"} <= names
    # Every technique a rule can flag has rules; the scripts' rules are apart.
    assert {rule.signal for rule in RULES} == set(MATCHED_TECHNIQUES)
    assert SCRIPT_RULES and all(rule.chars and not rule.anchors for rule in SCRIPT_RULES)
    assert DISGUISES.homoglyph_map()["а"] == "a"  # Cyrillic


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    """A copy of the shipped tables, to break."""
    folder = tmp_path / "rule_tables"
    folder.mkdir()
    for entry in RULE_TABLES.iterdir():
        if entry.name.endswith(".yaml"):
            (folder / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def test_a_copy_of_the_tables_loads_the_same_rules(tables: Path) -> None:
    loaded = load_rule_tables(tables)
    assert loaded.rules == RULES
    assert loaded.script_rules == SCRIPT_RULES
    assert loaded.disguises == DISGUISES


def _break(folder: Path, name: str, old: str, new: str) -> None:
    path = folder / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        # A pattern that does not compile.
        (
            "fake_system.yaml",
            r"'\bi (?:hereby )?authori[sz]e\b'",
            r"'\bi (?:hereby authori[sz]e\b'",
            r"fake_system\.yaml: rules\[\d+\]: the pattern does not compile",
        ),
        # A fragment nobody defined.
        (
            "role_play.yaml",
            "{{role_target}}",
            "{{role_targets}}",
            r"role_play\.yaml: rules\[0\]: no fragment named 'role_targets'",
        ),
        # YAML reads a bare `no` as a boolean, not as the word.
        (
            "role_play.yaml",
            "      - 'no'",
            "      - no",
            r"(?s)role_play\.yaml: .*rules\.2\.anchors\.1",
        ),
        # A misspelt key.
        (
            "output_steering.yaml",
            "    chars: [':', '=']",
            "    char: [':', '=']",
            r"(?s)output_steering\.yaml: .*rules\.1\.char\b",
        ),
        # A key given twice: PyYAML would keep the last one without a word.
        (
            "disguises.yaml",
            "rot13_markers: [rot13]",
            "rot13_markers: [rot13]\nrot13_markers: []",
            r"disguises\.yaml, line \d+: 'rot13_markers' is given twice",
        ),
        (
            "addressing.yaml",
            "signal: ignore-instructions",
            "signal: obfuscation",
            r"(?s)addressing\.yaml: .*signal.*must be one of",
        ),
        # A rule with nothing to gate it would never run.
        (
            "fake_system.yaml",
            "    chars: ['&lt;']",
            "    chars: []",
            r"fake_system\.yaml: rules\[\d+\]: a rule without anchors or chars would never run",
        ),
        (
            "scripts.yaml",
            "    markers: 모더레이터 검토자",
            "    markers: ' ' # 모더레이터 검토자",  # the rest of the line is now a comment
            r"scripts\.yaml: script_rules\[2\] \(Korean\): a script rule needs markers",
        ),
        (
            "disguises.yaml",
            "leet: {'0': o,",
            "leet: {'0': oo,",
            r"(?s)disguises\.yaml: .*leet.*'0': 'oo' is not one character to one letter",
        ),
    ],
)
def test_a_malformed_table_names_the_file_and_the_entry(
    tables: Path, name: str, old: str, new: str, message: str
) -> None:
    _break(tables, name, old, new)
    with pytest.raises(RuleFileError, match=message):
        load_rule_tables(tables)


def test_a_missing_table_fails(tables: Path) -> None:
    shutil.rmtree(tables)
    tables.mkdir()
    with pytest.raises(FileNotFoundError):
        load_rule_tables(tables)
