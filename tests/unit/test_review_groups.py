"""Routing reviews to moderator groups (issue 15): the settings, the rule in SQL (on SQLite),
keys with groups (API and CLI), the queue, claims and bulk decisions of such keys, and the
schema upgrade. The same on PostgreSQL: tests/integration/test_review_groups_real.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import Engine, inspect, text
from sqlmodel import Session
from typer.testing import CliRunner

from moderation.db import crud
from moderation.db.engine import create_tables, make_engine, upgrade_schema
from moderation.db.schemas import LANGUAGE_PATTERN
from moderation.events import (
    ModerationVerdict,
    PostSubmitted,
    ReviewPriority,
    ReviewRequested,
    utc_now,
)
from moderation.services.api import build_app
from moderation.services.api.cli import app as api_keys_cli
from moderation.services.api.publisher import InMemoryPublisher
from moderation.services.api.security import Principal, principal_of
from moderation.settings import (
    LANGUAGE_CODE_PATTERN,
    ModeratorGroup,
    ReviewSettings,
    Settings,
    get_settings,
)
from moderation.taxonomy import CATEGORIES, Category, Decision, Stage
from tests.unit.test_bulk_reviews_api import seed
from tests.unit.test_reviews_api import FakeWorkflows, who

JA_SPAM = ModeratorGroup(name="ja-spam", categories=[Category.SPAM], languages=["ja"])
JA = ModeratorGroup(name="ja", languages=["ja"])
CHILD_SAFETY = ModeratorGroup(
    name="child-safety", categories=[Category.SEXUAL_MINORS, Category.SELF_HARM]
)
GROUPS = [JA_SPAM, JA, CHILD_SAFETY]
ROUTING = crud.Routing(tuple(GROUPS), "general")
BULK = "/v1/reviews/bulk-decision"


# --- the settings ------------------------------------------------------------------------------


def test_groups_are_read_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = [
        {"name": "ja", "languages": ["ja"]},
        {"name": "child-safety", "categories": ["sexual_minors", "self_harm"]},
    ]
    monkeypatch.setenv("MODERATION_REVIEW__GROUPS", json.dumps(groups))
    monkeypatch.setenv("MODERATION_REVIEW__DEFAULT_GROUP", "everyone")

    review = Settings().review

    assert [(g.name, g.categories, g.languages) for g in review.groups] == [
        ("ja", [], ["ja"]),
        ("child-safety", [Category.SEXUAL_MINORS, Category.SELF_HARM], []),
    ]
    assert crud.Routing.of(review).names() == ["ja", "child-safety", "everyone"]


def test_by_default_nothing_is_routed() -> None:
    review = Settings().review
    assert review.groups == [] and review.default_group == "general"
    assert crud.Routing.of(review).names() == ["general"]


@pytest.mark.parametrize(
    ("groups", "default", "problem"),
    [
        ([{"name": "ja", "languages": ["ja"]}] * 2, "general", "['ja'] configured more than once"),
        ([{"name": "general", "languages": ["ja"]}], "general", "'general' is the default group"),
        ([{"name": "ja"}], "general", "group 'ja' needs categories or languages"),
        ([{"name": "ja", "languages": ["JA"]}], "general", "invalid language 'JA'"),
        ([{"name": "ja", "languages": ["japanese"]}], "general", "invalid language"),
        ([{"name": "Japan", "languages": ["ja"]}], "general", "name"),
        ([{"name": "x", "categories": ["gossip"]}], "general", "categories"),
        ([{"name": "x", "languages": ["ja"], "lang": ["ja"]}], "general", "lang"),
        ([], "Not A Slug", "default_group"),
    ],
)
def test_a_bad_group_configuration_is_refused_naming_the_problem(
    groups: list[dict[str, Any]], default: str, problem: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        ReviewSettings.model_validate({"groups": groups, "default_group": default})
    assert problem in str(refused.value)


def test_group_languages_follow_the_queue_filters_rule() -> None:
    assert LANGUAGE_CODE_PATTERN == LANGUAGE_PATTERN


# --- the rule, in SQL ----------------------------------------------------------------------------


def groups_of(engine: Engine, routing: crud.Routing | None = ROUTING) -> dict[str, str]:
    with Session(engine) as session:
        views, _ = crud.list_reviews(session, now=utc_now(), routing=routing, limit=200)
    return {view.review.post_id: view.group for view in views}


def test_a_review_goes_to_the_first_group_whose_every_criterion_matches(engine: Engine) -> None:
    seed(engine, "ja-spam", lang="ja", category=Category.SPAM)
    seed(engine, "ja-violence", lang="ja", category=Category.VIOLENCE)
    seed(engine, "ja-self-harm", lang="ja", category=Category.SELF_HARM)  # ja comes first
    seed(engine, "en-self-harm", lang="en", category=Category.SELF_HARM)
    seed(engine, "en-spam", lang="en", category=Category.SPAM)  # spam, but not Japanese
    seed(engine, "unknown-spam", category=Category.SPAM)  # no language known

    assert groups_of(engine) == {
        "ja-spam": "ja-spam",
        "ja-violence": "ja",
        "ja-self-harm": "ja",
        "en-self-harm": "child-safety",
        "en-spam": "general",
        "unknown-spam": "general",
    }
    # Another order, another answer: the order is the configuration's.
    reordered = crud.Routing((CHILD_SAFETY, JA), "rest")
    assert groups_of(engine, reordered)["ja-self-harm"] == "child-safety"
    assert groups_of(engine, reordered)["ja-spam"] == "ja"
    assert groups_of(engine, reordered)["en-spam"] == "rest"
    # Without groups every review is in the default group.
    assert set(groups_of(engine, None).values()) == {"general"}


def test_the_language_comes_from_the_metadata_else_from_stage_ones_signal(engine: Engine) -> None:
    violence = Category.VIOLENCE
    seed(engine, "by-signal", signals=("unreadable:language:ja",), category=violence)
    seed(engine, "by-metadata", lang="JA", category=violence)  # compared lower-case
    # The submitter's `lang` wins over what stage 1 found.
    seed(engine, "declared-en", lang="en", signals=("unreadable:language:ja",), category=violence)

    groups = groups_of(engine)

    assert (groups["by-signal"], groups["by-metadata"]) == ("ja", "ja")
    assert groups["declared-en"] == "general"


def test_the_group_is_computed_when_read_so_a_post_recorded_later_reroutes_it(
    engine: Engine,
) -> None:
    verdict = ModerationVerdict(
        post_id="late",
        decision=Decision.REVIEW,
        scores={**dict.fromkeys(CATEGORIES, 0.02), Category.VIOLENCE: 0.55},
        primary_category=Category.VIOLENCE,
        confidence=0.55,
        stage=Stage.MODEL,
        model_version="fast-test",
        policy_version="v1",
        latency_ms=3.0,
    )
    request = ReviewRequested(
        post_id="late", reason="uncertain", priority=ReviewPriority.NORMAL, verdict=verdict
    )
    with Session(engine) as session:
        crud.record_events(session, events=[verdict, request])
    assert groups_of(engine) == {"late": "general"}  # the post (and its language) not yet here

    post = PostSubmitted(post_id="late", text="...", author_id="a", metadata={"lang": "ja"})
    with Session(engine) as session:
        crud.record_events(session, events=[post])

    assert groups_of(engine) == {"late": "ja"}


def test_lists_and_counts_filter_by_group(engine: Engine) -> None:
    seed(engine, "p-ja", lang="ja", category=Category.VIOLENCE)
    seed(engine, "p-en", lang="en", category=Category.SELF_HARM)
    seed(engine, "p-en-2", lang="en", category=Category.SPAM)
    with Session(engine) as session:
        now = utc_now()
        views, total = crud.list_reviews(session, now=now, routing=ROUTING, groups={"ja"})
        assert ([v.review.post_id for v in views], total) == (["p-ja"], 1)
        views, total = crud.list_reviews(
            session, now=now, routing=ROUTING, groups={"child-safety", "general"}
        )
        assert ({v.review.post_id for v in views}, total) == ({"p-en", "p-en-2"}, 2)
        counts = crud.open_reviews_by_group(session, routing=ROUTING)
        assert counts == {"ja-spam": 0, "ja": 1, "child-safety": 1, "general": 1}
        assert crud.open_reviews_by_group(session, routing=None) == {"general": 3}
        assert crud.open_reviews_by_group(session, routing=ROUTING, tenants=frozenset({"x"})) == {
            "ja-spam": 0,
            "ja": 0,
            "child-safety": 0,
            "general": 0,
        }


# --- keys with groups ----------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    return Settings(review=ReviewSettings(groups=GROUPS))


@pytest.fixture
def workflows() -> FakeWorkflows:
    return FakeWorkflows()


@pytest.fixture
def app(
    settings: Settings, publisher: InMemoryPublisher, engine: Engine, workflows: FakeWorkflows
) -> FastAPI:
    return build_app(settings, publisher=publisher, engine=engine, workflows=workflows)


def group_key(
    engine: Engine, name: str, *groups: str, scopes: tuple[str, ...] = ("moderate",)
) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name=name, scopes=scopes, moderator_groups=groups
        )
    return {"Authorization": f"Bearer {plaintext}"}


def test_a_principal_works_on_its_groups_an_admin_and_a_key_without_groups_on_all() -> None:
    mod = Principal(key_id=1, name="m", scopes=frozenset({"moderate"}))
    assert mod.review_groups is None
    ja = Principal(
        key_id=2, name="j", scopes=frozenset({"moderate"}), moderator_groups=frozenset({"ja"})
    )
    assert ja.review_groups == frozenset({"ja"})
    root = Principal(
        key_id=3, name="r", scopes=frozenset({"admin"}), moderator_groups=frozenset({"ja"})
    )
    assert root.review_groups is None


def test_crud_refuses_groups_without_moderate_malformed_or_unknown(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(ValueError, match="only to keys with the `moderate` scope"):
            crud.create_api_key(session, name="r", scopes=["read"], moderator_groups=["ja"])
        with pytest.raises(ValueError, match="invalid moderator group 'JA'"):
            crud.create_api_key(session, name="m", scopes=["moderate"], moderator_groups=["JA"])
        with pytest.raises(ValueError, match=r"unknown moderator group\(s\) \['es'\]"):
            crud.create_api_key(
                session,
                name="m",
                scopes=["moderate"],
                moderator_groups=["ja", "es"],
                known_groups=ROUTING.names(),
            )
        _, key = crud.create_api_key(
            session,
            name="m",
            scopes=["moderate"],
            moderator_groups=["ja", "general", "ja"],
            known_groups=ROUTING.names(),
        )
        assert key.moderator_groups == ["general", "ja"]
        assert principal_of(key).review_groups == frozenset({"general", "ja"})
        assert crud.api_key_state(key)["moderator_groups"] == ["general", "ja"]
        assert len(crud.list_api_keys(session)) == 1


async def test_the_admin_api_creates_and_lists_keys_with_groups(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    root = group_key(engine, "root", scopes=("admin",))
    body = {"name": "ja team", "scopes": ["moderate"], "moderator_groups": ["ja", "general"]}

    created = await client.post("/v1/admin/keys", json=body, headers=root)

    assert created.status_code == 201, created.text
    assert created.json()["key"]["moderator_groups"] == ["general", "ja"]
    listed = (await client.get("/v1/admin/keys", headers=root)).json()["items"]
    assert [(k["name"], k["moderator_groups"]) for k in listed] == [
        ("root", []),
        ("ja team", ["general", "ja"]),
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            {"scopes": ["moderate"], "moderator_groups": ["es"]},
            "unknown moderator group(s) ['es']; configured: ['ja-spam', 'ja', 'child-safety', "
            "'general']",
        ),
        ({"scopes": ["read"], "moderator_groups": ["ja"]}, "`moderate` scope"),
        ({"scopes": ["moderate"], "moderator_groups": ["Ja!"]}, "moderator_groups"),
    ],
)
async def test_the_admin_api_refuses_unknown_groups_and_groups_without_moderate(
    client: httpx.AsyncClient, engine: Engine, body: dict[str, Any], problem: str
) -> None:
    root = group_key(engine, "root", scopes=("admin",))

    refused = await client.post("/v1/admin/keys", json={"name": "x", **body}, headers=root)

    assert refused.status_code == 422, refused.text
    assert problem in refused.text
    with Session(engine) as session:
        assert [k.name for k in crud.list_api_keys(session)] == ["root"]


@pytest.fixture
def cli_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("MODERATION_DB__URL_OVERRIDE", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("MODERATION_REVIEW__GROUPS", '[{"name": "ja", "languages": ["ja"]}]')
    monkeypatch.setenv("COLUMNS", "250")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_the_cli_creates_and_lists_keys_with_groups_and_refuses_unknown_ones(
    cli_settings: Settings,
) -> None:
    runner = CliRunner()
    created = runner.invoke(
        api_keys_cli, ["create", "--name", "ja-team", "--scopes", "moderate", "--groups", "ja"]
    )
    assert created.exit_code == 0, created.output
    assert "groups ja" in created.stderr

    unknown = runner.invoke(
        api_keys_cli, ["create", "--name", "x", "--scopes", "moderate", "--groups", "ja,es"]
    )
    assert unknown.exit_code == 2
    assert "unknown moderator group(s) ['es']; configured: ['ja', 'general']" in unknown.stderr
    not_moderate = runner.invoke(
        api_keys_cli, ["create", "--name", "y", "--scopes", "read", "--groups", "ja"]
    )
    assert not_moderate.exit_code == 2 and "`moderate` scope" in not_moderate.stderr

    listed = runner.invoke(api_keys_cli, ["list"])
    assert listed.exit_code == 0, listed.output
    assert "API keys (1)" in listed.stdout and "groups" in listed.stdout
    [row] = [line for line in listed.stdout.splitlines() if "ja-team" in line]
    assert " ja " in row


# --- the queue of a key with groups --------------------------------------------------------------


@pytest.fixture
def world(engine: Engine) -> dict[str, str]:
    """A Japanese review, a child-safety review and a general one; returns their review ids."""
    return {
        "ja": seed(engine, "p-ja", lang="ja", category=Category.VIOLENCE),
        "child-safety": seed(engine, "p-cs", lang="en", category=Category.SELF_HARM),
        "general": seed(engine, "p-gen", lang="en", category=Category.SPAM),
    }


async def test_a_key_lists_its_groups_by_default_and_another_group_is_403(
    client: httpx.AsyncClient, engine: Engine, world: dict[str, str]
) -> None:
    ja = group_key(engine, "ja-team", "ja")
    everyone = group_key(engine, "everyone")

    own = (await client.get("/v1/reviews", headers=ja)).json()
    assert [(r["review_id"], r["group"]) for r in own["items"]] == [(world["ja"], "ja")]
    assert own["total"] == 1
    named = (await client.get("/v1/reviews", params={"group": "ja"}, headers=ja)).json()
    assert named["total"] == 1
    other = await client.get("/v1/reviews", params={"group": "general"}, headers=ja)
    assert other.status_code == 403
    assert other.json()["detail"] == (
        f"'ja-team (key:{who(engine, 'ja-team').removeprefix('key:')})' works on moderator "
        "group(s) 'ja', not 'general'"
    )
    unknown = await client.get("/v1/reviews", params={"group": "es"}, headers=everyone)
    assert unknown.status_code == 422 and "unknown moderator group 'es'" in unknown.text
    # A key without groups (and an admin) sees every group, and may narrow to one.
    groups = {
        r["group"] for r in (await client.get("/v1/reviews", headers=everyone)).json()["items"]
    }
    assert groups == {"ja", "child-safety", "general"}
    narrowed = await client.get("/v1/reviews", params={"group": "child-safety"}, headers=everyone)
    assert [r["review_id"] for r in narrowed.json()["items"]] == [world["child-safety"]]


async def test_claim_next_claims_only_in_the_keys_groups(
    client: httpx.AsyncClient, engine: Engine, world: dict[str, str]
) -> None:
    ja = group_key(engine, "ja-team", "ja")
    safety = group_key(engine, "safety-team", "child-safety", "general")

    first = await client.post("/v1/reviews/claim-next", headers=ja)
    assert first.status_code == 200 and first.json()["review_id"] == world["ja"]
    assert first.json()["group"] == "ja"
    other = group_key(engine, "ja-team-2", "ja")
    assert (await client.post("/v1/reviews/claim-next", headers=other)).status_code == 204

    narrowed = await client.post(
        "/v1/reviews/claim-next", params={"group": "general"}, headers=safety
    )
    assert narrowed.json()["review_id"] == world["general"]
    rest = await client.post("/v1/reviews/claim-next", headers=safety)
    assert rest.json()["review_id"] == world["child-safety"]
    refused = await client.post("/v1/reviews/claim-next", params={"group": "ja"}, headers=safety)
    assert refused.status_code == 403


async def test_claiming_a_review_of_another_group_is_403_naming_both_and_it_stays_readable(
    client: httpx.AsyncClient, engine: Engine, world: dict[str, str]
) -> None:
    ja = group_key(engine, "ja-team", "ja")
    review_id = world["general"]

    refused = await client.post(f"/v1/reviews/{review_id}/claim", headers=ja)

    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        f"review '{review_id}' is routed to moderator group 'general'; "
        f"'ja-team ({who(engine, 'ja-team')})' works on 'ja'"
    )
    shown = await client.get(f"/v1/reviews/{review_id}", headers=ja)
    assert shown.status_code == 200 and shown.json()["group"] == "general"
    assert shown.json()["status"] == "pending"  # nothing was claimed
    # Its own group's review, and an admin anywhere.
    assert (await client.post(f"/v1/reviews/{world['ja']}/claim", headers=ja)).status_code == 200
    root = group_key(engine, "root", scopes=("admin",))
    assert (await client.post(f"/v1/reviews/{review_id}/claim", headers=root)).status_code == 200
    # Tenants stay the isolation: a review of another tenant is 404 whatever the group.
    hidden = seed(engine, "p-other", lang="ja", tenant="acme")
    assert (await client.post(f"/v1/reviews/{hidden}/claim", headers=ja)).status_code == 404


async def test_a_bulk_decision_skips_the_reviews_of_other_groups_saying_why(
    client: httpx.AsyncClient,
    engine: Engine,
    world: dict[str, str],
    workflows: FakeWorkflows,
) -> None:
    ja = group_key(engine, "ja-team", "ja")
    body = {
        "review_ids": [world["ja"], world["general"]],
        "label": "violence",
        "decision": "remove",
        "note": None,
    }

    result = await client.post(BULK, json=body, headers=ja)

    assert result.status_code == 200, result.text
    outcomes = {o["review_id"]: o for o in result.json()["outcomes"]}
    assert outcomes[world["ja"]]["outcome"] == "decided"
    assert outcomes[world["general"]]["outcome"] == "skipped"
    assert "routed to moderator group 'general'" in outcomes[world["general"]]["reason"]
    assert [review_id for review_id, _ in workflows.raised] == [world["ja"]]


async def test_the_groups_route_lists_groups_in_order_with_open_counts_and_the_keys_own(
    client: httpx.AsyncClient, engine: Engine, world: dict[str, str]
) -> None:
    ja = group_key(engine, "ja-team", "ja")
    root = group_key(engine, "root", scopes=("admin",))

    answer = (await client.get("/v1/reviews/groups", headers=ja)).json()

    assert [(g["name"], g["open"], g["mine"], g["default"]) for g in answer["items"]] == [
        ("ja-spam", 0, False, False),
        ("ja", 1, True, False),
        ("child-safety", 1, False, False),
        ("general", 1, False, True),
    ]
    assert answer["items"][2]["categories"] == ["sexual_minors", "self_harm"]
    assert answer["key_groups"] == ["ja"]
    admin_view = (await client.get("/v1/reviews/groups", headers=root)).json()
    assert admin_view["key_groups"] is None
    assert all(g["mine"] for g in admin_view["items"])


# --- the schema upgrade --------------------------------------------------------------------------


def test_the_upgrade_adds_moderator_groups_to_old_keys(tmp_path: Path, settings: Settings) -> None:
    engine = make_engine(settings, url=f"sqlite:///{tmp_path / 'old.db'}")
    try:
        create_tables(engine)
        with Session(engine) as session:
            crud.create_api_key(session, name="old", scopes=["moderate"])
        # An API-key table from before the groups: without the column.
        with engine.begin() as connection:
            connection.execute(text("ALTER TABLE api_keys DROP COLUMN moderator_groups"))
        assert "moderator_groups" not in {
            c["name"] for c in inspect(engine).get_columns("api_keys")
        }

        upgrade_schema(engine)
        upgrade_schema(engine)  # idempotent

        with Session(engine) as session:
            [key] = crud.list_api_keys(session)
        assert key.moderator_groups == []
        assert principal_of(key).review_groups is None
    finally:
        engine.dispose()
