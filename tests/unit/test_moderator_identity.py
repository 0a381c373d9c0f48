"""Issue 11, finding 7: the moderator is the API key's id (`key:<id>`), shown with its name."""

from __future__ import annotations

from moderation.actors import actor_display, actor_key_id, actor_key_ids, key_actor
from moderation.services.api.security import Principal


def test_a_key_is_recorded_by_its_id_and_shown_with_its_name() -> None:
    principal = Principal(key_id=7, name="alice", scopes=frozenset({"moderate"}))

    assert principal.actor == key_actor(7) == "key:7"
    assert principal.display == "alice (key:7)"
    assert actor_display("key:7", {7: "alice"}) == "alice (key:7)"
    assert actor_display("key:8", {}) == "unknown key (key:8)"


def test_rows_from_before_key_ids_stay_readable_and_are_marked() -> None:
    assert actor_key_id("alice") is None
    assert actor_key_id("key:") is None and actor_key_id("key:٣") is None
    assert actor_key_ids(["key:1", "bob", None, "key:1", "key:2"]) == {1, 2}
    assert actor_display("alice", {}) == "alice (name only, recorded before key ids)"
    assert actor_display(None, {}) is None


def test_the_dashboard_shows_the_moderator_with_its_name() -> None:
    from hitl_dashboard.metrics_page import moderator_frame
    from moderation.db.schemas import MetricsOverviewPublic
    from tests.unit.test_metrics_dashboard import empty_overview

    answer = empty_overview()
    no_means = {"mean_handling_seconds": None, "mean_time_to_decision_seconds": None}
    answer["queue"]["moderators"] = [
        {"moderator": "key:1", "moderator_display": "sam (key:1)", "decided": 2, **no_means},
        {"moderator": "key:2", "moderator_display": "sam (key:2)", "decided": 1, **no_means},
    ]
    overview = MetricsOverviewPublic.model_validate(answer)

    assert list(moderator_frame(overview).index) == ["sam (key:1)", "sam (key:2)"]
