"""The injection screen's rules, read from the YAML files in `rule_tables/` (the matcher is
`moderation.classifier.injection.screen`).

A rule is a signal (one of `TECHNIQUES`), a regex matched on the normalised text, and the anchor
words (or, for scripts written without spaces, the substrings) that must occur in a post before
its regex runs. Python's `re` tries every alternative at every position, so one big alternation
would cost ~80 µs per post: a rule's regex runs only when the post contains a word of each of its
anchor sets (and one of its `chars`, when given). Most posts contain no anchor combination and
cost a tokenisation and a set intersection.

Every pattern must stay linear in the text's length: word gaps are `\\W+`, so punctuation and line
breaks between words do not hide a phrase; fillers are bounded (`{0,3}`); no quantifier nests over
the same characters (`tests/unit/test_hostile_text.py` checks it).

A rule file (every `rule_tables/*.yaml` but the two below) reads:

    signal: fake-system          # the signal of every rule in the file
    fragments: {name: text}      # pieces this file's rules use as `{{name}}` (optional)
    rules:                       # plain rules
      - pattern: text            # the regex
        anchors: [words, ...]    # anchor sets, each a space-separated list of words
        chars: [text, ...]       # substrings; a rule needs anchors, chars or both
    other_languages: [...]       # "ignore your previous instructions" (`OtherLanguageRule`)
    addressing: [...]            # how a language speaks to the reader (`AddressingRule`)
    script_rules: [...]          # scripts without spaces, gated by `markers` (`ScriptRule`)

A text is a string or a list of strings joined with nothing (a long pattern, one piece a line);
patterns are single-quoted (backslashes are literal, a quote is written twice). `fragments.yaml`
holds the fragments every file may use; `disguises.yaml` the tables that undo disguises
(`Disguises`). The tables are read once, at import; a malformed file fails the import with its
name and the entry at fault (`RuleFileError`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, field_validator

IGNORE_INSTRUCTIONS = "ignore-instructions"
FAKE_SYSTEM = "fake-system"
ROLE_PLAY = "role-play"
OUTPUT_STEERING = "output-steering"
ENCODED_PAYLOAD = "encoded-payload"
OBFUSCATION = "obfuscation"

TECHNIQUES: tuple[str, ...] = (
    IGNORE_INSTRUCTIONS,
    FAKE_SYSTEM,
    ROLE_PLAY,
    OUTPUT_STEERING,
    ENCODED_PAYLOAD,
    OBFUSCATION,
)
# The other two are found by the screen itself, from how a match was reached.
MATCHED_TECHNIQUES = (IGNORE_INSTRUCTIONS, FAKE_SYSTEM, ROLE_PLAY, OUTPUT_STEERING)

RULE_TABLES = resources.files("moderation.classifier.injection") / "rule_tables"
FRAGMENTS_FILE = "fragments.yaml"
DISGUISES_FILE = "disguises.yaml"


class RuleFileError(ValueError):
    """A rule file that cannot be read as rules; the message names the file and the entry."""


@dataclass(frozen=True)
class Rule:
    """One rule: its regex runs on a post that has a word of every anchor set and one of `chars`
    (each when given)."""

    signal: str
    pattern: re.Pattern[str]
    anchors: tuple[frozenset[str], ...]
    chars: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# The files' shapes: strict types (a bare `no` in YAML is a boolean, not a word), no unknown key.

Text = str | list[str]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PlainRule(_Entry):
    pattern: Text
    anchors: list[str] = []
    chars: list[str] = []


class OtherLanguageRule(_Entry):
    """An order to ignore (all|your) (previous) instructions in one language: `verbs`, then a
    qualifier `before` the noun, `after` it, or (German, Dutch) `adjectives` between article and
    noun."""

    language: str
    verbs: Text
    before: Text
    nouns: Text
    after: Text
    adjectives: Text = ""
    noun_words: str
    verb_words: str


class AddressingRule(_Entry):
    """A post speaking to its reader in one language (fields: see `addressing.yaml`)."""

    language: str
    readers: Text
    reader_words: str
    dear: Text
    hello: Text
    machines: Text
    to: Text
    reading: Text
    orders: Text
    reading_before: Text = ""
    dative: Text = ""


class ScriptRule(_Entry):
    language: str
    pattern: Text
    markers: str


class RuleFile(_Entry):
    signal: str
    fragments: dict[str, Text] = {}
    rules: list[PlainRule] = []
    other_languages: list[OtherLanguageRule] = []
    addressing: list[AddressingRule] = []
    script_rules: list[ScriptRule] = []

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, signal: str) -> str:
        if signal not in MATCHED_TECHNIQUES:
            raise ValueError(f"must be one of {', '.join(MATCHED_TECHNIQUES)}")
        return signal


_LOWER_WORD = re.compile(r"[a-z]+")


class Disguises(_Entry):
    """The tables that undo disguises (`disguises.yaml`)."""

    homoglyphs: dict[str, dict[str, str]]  # by script: look-alike -> Latin letter
    leet: dict[str, str]  # digit or symbol -> letter
    spaced_triggers: list[str]  # stems that make a spaced-out run obfuscation on its own
    rot13_triggers: list[str]  # words whose rot13 form gets a post decoded
    rot13_markers: list[str]  # words that get a post decoded as they are
    reversed_triggers: list[str]  # words whose reversed form gets a post reversed

    @field_validator("homoglyphs")
    @classmethod
    def _letter_maps(cls, groups: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for group in groups.values():
            _check_letter_map(group)
        return groups

    @field_validator("leet")
    @classmethod
    def _leet_map(cls, table: dict[str, str]) -> dict[str, str]:
        return _check_letter_map(table)

    @field_validator("spaced_triggers", "rot13_triggers", "reversed_triggers")
    @classmethod
    def _lower_words(cls, words: list[str]) -> list[str]:
        for word in words:
            if not _LOWER_WORD.fullmatch(word):
                raise ValueError(f"{word!r} is not a word of lower-case letters a-z")
        return words

    def homoglyph_map(self) -> dict[str, str]:
        """Every look-alike and its Latin letter, all scripts together."""
        return {char: latin for group in self.homoglyphs.values() for char, latin in group.items()}


def _check_letter_map(table: dict[str, str]) -> dict[str, str]:
    for char, letter in table.items():
        if len(char) != 1 or not _LOWER_WORD.fullmatch(letter) or len(letter) != 1:
            raise ValueError(f"{char!r}: {letter!r} is not one character to one letter a-z")
    return table


_Fragments = TypeAdapter(dict[str, Text], config=ConfigDict(strict=True))


# --------------------------------------------------------------------------------------------
# Reading.

# libyaml's parser when PyYAML has it (ten times faster), the pure-Python one otherwise.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _reject_duplicate_keys(node: yaml.Node, name: str) -> None:
    """PyYAML keeps the last of two equal keys without a word: a copy-paste slip must not."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    line = key.start_mark.line + 1
                    raise RuleFileError(f"{name}, line {line}: {key.value!r} is given twice")
                seen.add(key.value)
            _reject_duplicate_keys(value, name)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, name)


def _read_yaml(file: Traversable) -> Any:
    loader = _LOADER(file.read_text(encoding="utf-8"))
    try:
        node = loader.get_single_node()
        if node is None:
            raise RuleFileError(f"{file.name}: the file is empty")
        _reject_duplicate_keys(node, file.name)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise RuleFileError(f"{file.name}: not valid YAML: {error}") from error
    finally:
        loader.dispose()


_Model = TypeVar("_Model", bound=BaseModel)


def _validate(model: type[_Model], file: Traversable) -> _Model:
    try:
        return model.model_validate(_read_yaml(file))
    except ValidationError as error:
        raise RuleFileError(f"{file.name}: {error}") from error


_REFERENCE = re.compile(r"\{\{(\w*)\}\}")


def _joined(text: Text) -> str:
    return text if isinstance(text, str) else "".join(text)


def _expander(fragments: Mapping[str, str], where: str) -> Callable[[Text], str]:
    """A function that joins a text and puts the fragments in for its `{{name}}` references."""

    def fragment(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in fragments:
            raise RuleFileError(f"{where}: no fragment named {name!r}")
        return fragments[name]

    def expand(text: Text) -> str:
        return _REFERENCE.sub(fragment, _joined(text))

    return expand


def _rule(
    signal: str, pattern: str, anchors: Sequence[str], chars: Sequence[str], where: str
) -> Rule:
    word_sets = tuple(frozenset(words.split()) for words in anchors)
    if not all(word_sets):
        raise RuleFileError(f"{where}: an anchor set has no words")
    if not word_sets and not chars:
        raise RuleFileError(f"{where}: a rule without anchors or chars would never run")
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise RuleFileError(f"{where}: the pattern does not compile: {error}") from error
    return Rule(signal, compiled, word_sets, tuple(chars))


def _other_language_pattern(rule: OtherLanguageRule, expand: Callable[[Text], str]) -> str:
    verbs, before, nouns, after = (
        expand(t) for t in (rule.verbs, rule.before, rule.nouns, rule.after)
    )
    adjectives = expand(rule.adjectives)
    fill2 = expand("{{fill2}}")
    qualified = rf"(?:{before})\W+" + fill2 + rf"(?:{nouns})\b"
    if adjectives:
        qualified += rf"|{fill2}(?:{adjectives})\W+(?:{nouns})\b"
    trailing = rf"{fill2}(?:{nouns})\W+(?:{after})\b"
    return rf"\b(?:{verbs})\W+(?:{qualified}|{trailing})"


def _addressing_pattern(rule: AddressingRule, expand: Callable[[Text], str]) -> str:
    """The ways one language speaks to the reader: "dear moderator", "hello AI", "to the
    moderator:" at the start of a sentence, "moderator who reads this", "moderator, ignore ..."."""
    readers, machines, dative = expand(rule.readers), expand(rule.machines), expand(rule.dative)
    start = r"(?:^|\n|[.!?;¡¿]\s?)\W{0,3}"
    # "Dear moderator," is an address; "attention AI researchers" is not.
    vocative = r"(?=\s?(?:[,:;!.\n]|$))"
    to_reader = rf"(?:{expand(rule.to)})\s?(?:{readers})" + (rf"|{dative}" if dative else "")
    alternatives = [
        rf"\b(?:{expand(rule.dear)})\s(?:{readers}){vocative}",
        rf"\b(?:{expand(rule.hello)})\W{{1,2}}(?:{machines}){vocative}",
        rf"{start}(?:{to_reader})\s?[:,]",
        rf"\b(?:{readers})\s(?:{expand(rule.reading)})\b",
        rf"\b(?:{readers})\s?[,:]\s?(?:\w+\W+){{0,3}}?(?:{expand(rule.orders)})\b",
        # A sentence opening on a human reader: "Moderator, this is only a joke ..." (a colon is
        # a speaker's label, "Moderator: welcome to the panel"; "AI, ML and data" is a list).
        rf"{start}(?!(?:{machines})\W)(?:{readers})\s?[,،、，]",
    ]
    reading_before = expand(rule.reading_before)
    if reading_before:
        alternatives.append(rf"\b(?:{reading_before})\s(?:{readers})\b")
    return unicodedata.normalize("NFKC", "|".join(alternatives))


def _file_rules(file: Traversable, shared: Mapping[str, str]) -> tuple[list[Rule], list[Rule]]:
    """The rules of one rule file, and its script rules."""
    name = file.name
    table = _validate(RuleFile, file)
    clashes = sorted(set(table.fragments) & set(shared))
    if clashes:
        raise RuleFileError(f"{name}: fragments {clashes} are already in {FRAGMENTS_FILE}")
    fragments = {**shared, **{key: _joined(text) for key, text in table.fragments.items()}}
    signal = table.signal
    rules: list[Rule] = []
    for index, plain in enumerate(table.rules):
        where = f"{name}: rules[{index}]"
        expand = _expander(fragments, where)
        anchors = [expand(words) for words in plain.anchors]
        rules.append(_rule(signal, expand(plain.pattern), anchors, plain.chars, where))
    for index, other in enumerate(table.other_languages):
        where = f"{name}: other_languages[{index}] ({other.language})"
        expand = _expander(fragments, where)
        pattern = _other_language_pattern(other, expand)
        anchors = [expand(other.noun_words), expand(other.verb_words)]
        rules.append(_rule(signal, pattern, anchors, (), where))
    for index, addressing in enumerate(table.addressing):
        where = f"{name}: addressing[{index}] ({addressing.language})"
        expand = _expander(fragments, where)
        pattern = _addressing_pattern(addressing, expand)
        rules.append(_rule(signal, pattern, [expand(addressing.reader_words)], (), where))
    script_rules: list[Rule] = []
    for index, script in enumerate(table.script_rules):
        where = f"{name}: script_rules[{index}] ({script.language})"
        expand = _expander(fragments, where)
        markers = expand(script.markers).split()
        if not markers:
            raise RuleFileError(f"{where}: a script rule needs markers")
        script_rules.append(_rule(signal, expand(script.pattern), (), markers, where))
    return rules, script_rules


@dataclass(frozen=True)
class RuleTables:
    """Everything the screen reads from `rule_tables/`."""

    rules: tuple[Rule, ...]  # matched on every post, gated by anchor words or chars
    script_rules: tuple[Rule, ...]  # matched on non-ASCII posts holding one of their markers
    disguises: Disguises


def load_rule_tables(folder: Traversable = RULE_TABLES) -> RuleTables:
    """Read and check every table of `folder`; `RuleFileError` names the file and entry at fault."""
    try:
        shared_texts = _Fragments.validate_python(_read_yaml(folder / FRAGMENTS_FILE))
    except ValidationError as error:
        raise RuleFileError(f"{FRAGMENTS_FILE}: {error}") from error
    shared = {name: _joined(text) for name, text in shared_texts.items()}
    rules: list[Rule] = []
    script_rules: list[Rule] = []
    rule_files = sorted(
        (f for f in folder.iterdir() if f.name.endswith(".yaml")),
        key=lambda f: f.name,
    )
    for file in rule_files:
        if file.name in (FRAGMENTS_FILE, DISGUISES_FILE):
            continue
        file_rules, file_script_rules = _file_rules(file, shared)
        rules += file_rules
        script_rules += file_script_rules
    disguises = _validate(Disguises, folder / DISGUISES_FILE)
    return RuleTables(tuple(rules), tuple(script_rules), disguises)


TABLES = load_rule_tables()
RULES = TABLES.rules
SCRIPT_RULES = TABLES.script_rules
DISGUISES = TABLES.disguises
