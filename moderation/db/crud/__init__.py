"""The single database API: keyword-only functions over a `Session`, for every reader and writer.

The api, the recorder, the review workflow, the dashboards and the jobs go through these
functions; nothing else writes SQL against the read model. Every write function commits its own
transaction. Callers import the package (`from moderation.db import crud`); the modules split it
by concern:

- `projections`: the recorder's idempotent projection of the topics (`record_events`);
  `_post_status`: the post status derived from the recorded facts (its rules are there);
- `reads`: posts and their trails, verdicts, human decisions;
- `reviews`: the moderators' queue (claims, decisions, escalation); `appeals`;
- `queue_stats`, `metrics`, `model_metrics`, `overview`: what the dashboards show;
- `api_keys`, `idempotency`, `registry` (model versions), `audit`, `job_runs`;
- `feedback`: the human decisions the nightly job learns from;
- `_sql`: the private helpers the modules share (tables, the idempotent insert).
"""

from moderation.db.crud.api_keys import (
    API_KEY_PREFIX,
    API_SCOPES,
    api_key_names,
    api_key_prefix,
    authenticate_api_key,
    create_api_key,
    revoke_api_key,
)
from moderation.db.crud.appeals import (
    count_appeals,
    latest_decision,
    open_appeal_for,
    record_appeal,
)
from moderation.db.crud.audit import (
    AUDIT_ENTITY_REVIEW,
    append_audit,
)
from moderation.db.crud.config import (
    AUDIT_ENTITY_CONFIG,
    ConfigChange,
    config_changes,
    list_config,
    set_config,
)
from moderation.db.crud.feedback import (
    FeedbackDecision,
    list_feedback_decisions,
)
from moderation.db.crud.idempotency import (
    claim_idempotency_key,
    mark_published,
)
from moderation.db.crud.job_runs import (
    finish_job_run,
    list_job_runs,
    release_advisory_lock,
    start_job_run,
    try_advisory_lock,
)
from moderation.db.crud.metrics import (
    HUMAN_STAGE,
    METRICS_MAX_BUCKETS,
    METRICS_ROW_CAP,
    MetricsWindow,
    agreement,
    category_mix,
    decision_mix,
    human_share,
    latency_percentiles,
    metrics_window,
    throughput_buckets,
)
from moderation.db.crud.model_metrics import (
    JOB_RUNS_SHOWN,
    MODEL_VERSIONS_SHOWN,
    ModelScores,
    model_scores,
    model_version_metrics,
    recent_job_runs,
)
from moderation.db.crud.overview import (
    metrics_overview,
)
from moderation.db.crud.projections import (
    RecordResult,
    record_events,
    record_review_requested,
)
from moderation.db.crud.queue_stats import (
    ReviewStats,
    moderator_load,
    oldest_waiting_review,
    queue_metrics,
    review_stats,
)
from moderation.db.crud.reads import (
    AuthorVerdict,
    DecidedPost,
    DecisionLogRow,
    PostTrailRows,
    count_author_verdicts,
    decision_log,
    get_post,
    get_post_trail,
    latest_automated_verdict,
    latest_automated_verdicts,
    list_author_verdicts,
    list_human_decisions,
    verdict_timings,
)
from moderation.db.crud.registry import (
    get_champion,
    promote_model_version,
    register_model_version,
)
from moderation.db.crud.reviews import (
    PRIORITY_ORDER,
    DecisionStart,
    ReviewView,
    begin_decision,
    claim_next,
    claim_review,
    create_review_task,
    effective_review_status,
    escalate_review,
    get_review,
    list_reviews,
    record_human_decision,
    revert_decision,
)
from moderation.db.crud.trails import post_trail

__all__ = [
    "post_trail",
    "AUDIT_ENTITY_CONFIG",
    "ConfigChange",
    "config_changes",
    "list_config",
    "set_config",
    "API_KEY_PREFIX",
    "API_SCOPES",
    "AUDIT_ENTITY_REVIEW",
    "AuthorVerdict",
    "DecisionLogRow",
    "DecisionStart",
    "FeedbackDecision",
    "HUMAN_STAGE",
    "DecidedPost",
    "JOB_RUNS_SHOWN",
    "METRICS_MAX_BUCKETS",
    "METRICS_ROW_CAP",
    "MODEL_VERSIONS_SHOWN",
    "MetricsWindow",
    "ModelScores",
    "PRIORITY_ORDER",
    "PostTrailRows",
    "RecordResult",
    "ReviewStats",
    "ReviewView",
    "agreement",
    "api_key_names",
    "api_key_prefix",
    "append_audit",
    "authenticate_api_key",
    "begin_decision",
    "category_mix",
    "claim_idempotency_key",
    "claim_next",
    "claim_review",
    "count_appeals",
    "count_author_verdicts",
    "create_api_key",
    "create_review_task",
    "decision_log",
    "decision_mix",
    "effective_review_status",
    "escalate_review",
    "finish_job_run",
    "get_champion",
    "get_post",
    "get_post_trail",
    "get_review",
    "human_share",
    "latency_percentiles",
    "latest_automated_verdict",
    "latest_automated_verdicts",
    "latest_decision",
    "list_author_verdicts",
    "list_feedback_decisions",
    "list_human_decisions",
    "list_job_runs",
    "list_reviews",
    "mark_published",
    "metrics_overview",
    "metrics_window",
    "model_scores",
    "model_version_metrics",
    "moderator_load",
    "oldest_waiting_review",
    "open_appeal_for",
    "promote_model_version",
    "queue_metrics",
    "recent_job_runs",
    "record_appeal",
    "record_events",
    "record_human_decision",
    "record_review_requested",
    "register_model_version",
    "release_advisory_lock",
    "revert_decision",
    "review_stats",
    "revoke_api_key",
    "start_job_run",
    "throughput_buckets",
    "try_advisory_lock",
    "verdict_timings",
]
