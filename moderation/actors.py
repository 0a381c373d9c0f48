"""Who claimed, decided or appealed: the API key's id (`key:<id>`), never its name.

Key names are labels chosen at creation and need not be unique: two keys named alike must not
hold, decide or be audited as each other. Claims (`reviews.claimed_by`), decisions
(`reviews.decided_by`, `decisions.moderator_id`, `ReviewDecided.moderator_id`) and the audit log
(`audit_log.actor`) record `key:<id>`; what people read shows it with the name, `alice (key:7)`.
Rows written before the id was used hold a bare name; they are shown as such, marked, and a
claim held under a bare name cannot be decided by a key (it lapses after `review.claim_seconds`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

KEY_ACTOR_PREFIX = "key:"
LEGACY_MARK = "name only, recorded before key ids"


def key_actor(key_id: int) -> str:
    """The recorded identity of the API key `key_id`."""
    return f"{KEY_ACTOR_PREFIX}{key_id}"


def actor_key_id(actor: str | None) -> int | None:
    """The key id of a recorded identity, None for a legacy name (or a system actor)."""
    if actor is None or not actor.startswith(KEY_ACTOR_PREFIX):
        return None
    digits = actor[len(KEY_ACTOR_PREFIX) :]
    return int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 18 else None


def actor_key_ids(actors: Iterable[str | None]) -> set[int]:
    """The key ids among recorded identities."""
    return {key_id for key_id in map(actor_key_id, actors) if key_id is not None}


def actor_display(actor: str | None, names: Mapping[int, str]) -> str | None:
    """`name (key:7)` for a key (`unknown key (key:7)` if its row is gone); a legacy name
    with a mark; None for None."""
    if actor is None:
        return None
    key_id = actor_key_id(actor)
    if key_id is None:
        return f"{actor} ({LEGACY_MARK})" if actor else actor
    return f"{names.get(key_id, 'unknown key')} ({actor})"
