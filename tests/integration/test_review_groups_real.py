"""Routing to moderator groups on the real PostgreSQL (the stack's read model).

The routing rule is one SQL CASE over IN subqueries (`crud.review_group`), used in SELECTs, in
the claim's conditional UPDATE and in a GROUP BY: PostgreSQL is where it must hold. The API runs
in process against the stack's database (as `test_tenant_isolation_real`), with a tenant of its
own so other tests' reviews never count; the publisher and the review workflow are in-process
fakes: this is about who may claim what, not about delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import Engine, inspect
from sqlmodel import Session

from moderation.db import crud
from moderation.services.api import build_app
from moderation.services.api.publisher import InMemoryPublisher
from moderation.settings import ModeratorGroup, ReviewSettings, Settings
from moderation.taxonomy import Category
from tests.unit.test_bulk_reviews_api import seed
from tests.unit.test_reviews_api import FakeWorkflows

pytestmark = pytest.mark.integration

GROUPS = [
    ModeratorGroup(name="ja", languages=["ja"]),
    ModeratorGroup(name="child-safety", categories=[Category.SEXUAL_MINORS, Category.SELF_HARM]),
]


@pytest.fixture
async def client(settings: Settings, read_model: Engine) -> AsyncIterator[httpx.AsyncClient]:
    routed = settings.model_copy(update={"review": ReviewSettings(groups=GROUPS)})
    app = build_app(
        routed, publisher=InMemoryPublisher(), engine=read_model, workflows=FakeWorkflows()
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


def key(engine: Engine, name: str, tenant: str, *groups: str) -> dict[str, str]:
    with Session(engine) as session:
        plaintext, _ = crud.create_api_key(
            session, name=name, scopes=["moderate"], tenant=tenant, moderator_groups=groups
        )
    return {"Authorization": f"Bearer {plaintext}"}


async def test_a_ja_key_claims_the_japanese_review_and_is_refused_the_other_groups(
    client: httpx.AsyncClient, read_model: Engine, unique: str
) -> None:
    assert read_model.dialect.name == "postgresql"
    assert "moderator_groups" in {c["name"] for c in inspect(read_model).get_columns("api_keys")}
    tenant = f"groups-{unique}"
    # Older and more urgent-looking reviews of the other groups come first in the queue.
    general = seed(read_model, f"{unique}-en", lang="en", category=Category.SPAM, tenant=tenant)
    safety = seed(read_model, f"{unique}-sh", lang="en", category=Category.SELF_HARM, tenant=tenant)
    japanese = seed(
        read_model,
        f"{unique}-ja",
        signals=("unreadable:language:ja",),  # no metadata: stage 1's signal says Japanese
        category=Category.VIOLENCE,
        tenant=tenant,
    )
    ja_team = key(read_model, f"ja-team-{unique}", tenant, "ja")

    listed = (await client.get("/v1/reviews", headers=ja_team)).json()
    assert [(r["review_id"], r["group"]) for r in listed["items"]] == [(japanese, "ja")]
    claimed = await client.post("/v1/reviews/claim-next", headers=ja_team)
    assert claimed.status_code == 200, claimed.text
    assert (claimed.json()["review_id"], claimed.json()["group"]) == (japanese, "ja")
    assert (await client.post("/v1/reviews/claim-next", headers=ja_team)).json()[
        "review_id"
    ] == japanese  # its own claim, extended; nothing of another group

    refused = await client.post(f"/v1/reviews/{general}/claim", headers=ja_team)
    assert refused.status_code == 403
    assert f"review '{general}' is routed to moderator group 'general'" in refused.text
    assert "works on 'ja'" in refused.text
    shown = await client.get(f"/v1/reviews/{safety}", headers=ja_team)
    assert (shown.status_code, shown.json()["group"], shown.json()["status"]) == (
        200,
        "child-safety",
        "pending",
    )

    counts = (await client.get("/v1/reviews/groups", headers=ja_team)).json()
    assert [(g["name"], g["open"], g["mine"]) for g in counts["items"]] == [
        ("ja", 1, True),
        ("child-safety", 1, False),
        ("general", 1, False),
    ]
    # A key without groups works on every group: the oldest open review, then any other.
    everyone = key(read_model, f"everyone-{unique}", tenant)
    oldest = await client.post("/v1/reviews/claim-next", headers=everyone)
    assert oldest.json()["review_id"] == general
    assert (await client.post(f"/v1/reviews/{safety}/claim", headers=everyone)).status_code == 200
