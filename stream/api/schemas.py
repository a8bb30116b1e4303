"""Every HTTP body, as one definition each: pydantic models that validate what comes in,
describe what goes out, and make the OpenAPI spec and the /docs page. The click event's
schema is the worker's own (``stream.events.WireClick``, a msgspec Struct). Routes whose
answer model has optional fields set ``response_model_exclude_unset``: the answer as
built, with no nulls added."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, ValidationError

from models.names import MAX_ID_CHARS
from stream.api.context import ApiError
from stream.events import WireClick

MAX_N = 100
MAX_SESSION_ITEMS = 200
MAX_BULK_ITEMS = 10_000
MAX_POST_EVENTS = 1000

# A session, item, category or tag id (models.names.is_id).
Id = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]*$")
]


class Body(BaseModel):
    """A request body: exact types (no "1" for 1, no true for 1.0), no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Error(BaseModel):
    """Every answer other than success: 4xx and 503."""

    model_config = ConfigDict(extra="allow")  # /health/ready adds its report for the admin

    error: str = Field(description="the reason, for a person to read")


# -- tenant routes -------------------------------------------------------------------------
class Feedback(BaseModel):
    """Explicit feedback on a recommendation (checked by ``stream.events.feedback_from_dict``,
    as the worker checks it on the ``feedback`` topic)."""

    session_id: Id
    item_id: Id
    type: Literal["click", "add_to_cart", "purchase"]
    rec_id: Id | None = Field(None, description="the recommendation it answers")
    ts: float | None = Field(None, description="unix seconds; default: now")
    tenant: str | None = Field(None, description="must match the URL's, if given")


class Accepted(BaseModel):
    accepted: int = Field(description="how many were produced to the topic")


class EventsAccepted(Accepted):
    event_ids: list[str] = Field(description="each event's id, in order (assigned if missing)")


class RankedItem(BaseModel):
    item_id: str
    score: float
    source: str | None = Field(None, description="the candidate source that ranked it highest")


class SessionRecommendations(BaseModel):
    """The ``recommendations`` topic's record for the session's latest click, each item
    with its ``source``; for a tenant switched off, no items and a ``reason``."""

    tenant: str
    session_id: str
    items: list[RankedItem]
    event_id: str | None = None
    rec_id: str | None = None
    trigger_item: str | None = None
    model_version: str | None = None
    variant: str | None = None
    strategy: str | None = None
    event_ts: float | None = None
    emitted_ts: float | None = None
    reason: str | None = Field(None, description='"tenant off" when the tenant is off')


class Rank(Body):
    items: list[Id] = Field(
        min_length=1, max_length=MAX_SESSION_ITEMS, description="the session's items, oldest first"
    )
    n: int | None = Field(None, ge=1, le=MAX_N, description="how many (default: top_k)")
    exclude: list[Id] = Field([], description="item ids never to return")
    category: list[str] = Field([], description="only items of these categories")


class Ranking(BaseModel):
    tenant: str
    items: list[RankedItem]
    strategy: str = Field(description="the first item's source")
    model_version: str | None


class ScoredItem(BaseModel):
    item_id: str
    score: float


class Similar(BaseModel):
    tenant: str
    item_id: str
    items: list[ScoredItem]
    model_version: str


class CatalogueItem(Body):
    available: bool = Field(True, description="false: never recommended")
    category: Id | None = None
    tags: list[Id] = []


class CatalogueEntry(BaseModel):
    item_id: str
    available: bool
    category: str | None = None
    tags: list[str] = []
    deleted: bool | None = None
    catalogue_version: int | None = Field(None, description="after a change: the new version")


class BulkItem(CatalogueItem):
    item_id: Id


class BulkItems(RootModel[list[BulkItem]]):
    root: list[BulkItem] = Field(min_length=1, max_length=MAX_BULK_ITEMS)


class Stored(BaseModel):
    stored: int
    catalogue_version: int


class VariantStats(BaseModel):
    recommendations: int
    hits: int
    hit_rate: float
    ci: list[float] = Field(description="Wilson 95 % interval of the hit rate")
    mean_hit_position: float | None
    clicks: int
    add_to_cart: int
    purchases: int


class TenantStats(BaseModel):
    tenant: str
    since_s: float
    variants: dict[str, VariantStats]


# -- admin routes --------------------------------------------------------------------------
class TenantMode(BaseModel):
    tenant: str
    mode: str
    model_version: str | None = None


class Tenants(BaseModel):
    tenants: list[TenantMode]


class Created(BaseModel):
    tenant: str
    created: bool


class Rules(Body):
    exclude: Literal["none", "current", "seen"] = "current"
    blocklist: list[str] = []
    include_categories: list[str] = []
    exclude_categories: list[str] = []


class NewKey(BaseModel):
    tenant: str
    key_id: str
    key: str = Field(description="shown in this answer only")


class Revoked(BaseModel):
    tenant: str
    revoked: str


class VersionInfo(BaseModel):
    version: str
    created: str | None
    parent: str | None
    current: bool
    promoted: bool
    metrics: dict[str, Any]
    counts: dict[str, Any]
    valid: bool


class Versions(BaseModel):
    tenant: str
    versions: list[VersionInfo]


class Serving(BaseModel):
    tenant: str
    current: str | None = Field(description="the version in service")
    workers_notified: int | None = None


class AbTest(Body):
    variant: str = Field(min_length=1, description="the candidate version")
    share: float = Field(0.1, gt=0, lt=1, description="the candidate's share of sessions")
    min_recommendations: int = Field(1000, ge=1, description="per arm, before the test may decide")


class Bandit(Body):
    versions: list[str] = Field(min_length=2)
    discount: float = Field(0.999, gt=0, le=1)
    floor: float = Field(0.01, ge=0, le=0.5)


class Stop(Body):
    action: Literal["promote", "keep"]


class Policy(BaseModel):
    """The experiment or bandit started, as its policy file holds it."""

    model_config = ConfigDict(extra="allow")

    tenant: str
    policy: str
    arms: dict[str, float] = Field(description="version -> share of sessions")
    workers_notified: int


class Experiment(BaseModel):
    """As ``streamrec experiment status --json``."""

    model_config = ConfigDict(extra="allow")

    tenant: str
    policy: str
    arms: dict[str, dict[str, Any]] = Field(
        description="version -> share, recommendations, hits, hit rate, 95 % interval"
    )
    decision: str | None
    p_value: float | None


# -- health ----------------------------------------------------------------------------------
class Health(BaseModel):
    """``status`` alone; with the admin token also the reasons, models and counters."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded", "live", "ready"]


# -- the spec --------------------------------------------------------------------------------
REASONS = {
    400: "bad input, with the reason",
    401: "no valid key",
    403: "a key that does not reach this tenant",
    404: "unknown tenant, session or item",
    408: "the body did not arrive in time",
    409: "a name too like an existing tenant's, or nothing to roll back to",
    413: "body or event over the limit",
    503: "Redis, the broker or the model unavailable, with the reason",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: all :class:`Error`, JSON even where the
    route's success is text or a page (which FastAPI would assume of a ``model``)."""
    error = {"application/json": {"schema": _ref("Error")}}
    return {c: {"description": REASONS[c], "content": error} for c in codes}


def tenant_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``error_responses`` of a tenant's route: besides ``codes``, what reaching a tenant
    may answer (a bad name or body, no key, a key for another tenant, an unknown tenant,
    or with auto-creation on a refused name)."""
    return error_responses(*sorted({400, 401, 403, 404, 409, 503, *codes}))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def request_body(model: type[BaseModel] | str, many: int = 0) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (to bound its size
    and time): ``model``, or with ``many`` one such object or an array of up to ``many``."""
    schema = _ref(model if isinstance(model, str) else model.__name__)
    if many:
        schema = {"oneOf": [schema, {"type": "array", "items": schema, "maxItems": many}]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# The bodies routes read themselves, and the error; their schemas join the spec's
# components (FastAPI adds those of the response models).
SPEC_MODELS: list[type[BaseModel]] = [
    Error,
    Feedback,
    Rank,
    CatalogueItem,
    BulkItems,
    Rules,
    AbTest,
    Bandit,
    Stop,
]


def spec_components() -> dict[str, Any]:
    """The components of the models above, and of the click event from its Struct."""
    from pydantic.json_schema import models_json_schema

    _, pydantic_defs = models_json_schema(
        [(m, "validation") for m in SPEC_MODELS],
        ref_template="#/components/schemas/{model}",
    )
    _, msgspec_defs = msgspec.json.schema_components(
        [WireClick], ref_template="#/components/schemas/{name}"
    )
    click = dict(msgspec_defs["WireClick"])
    # The worker reads past unknown members (its checked path); so does POST /events.
    click.pop("additionalProperties", None)
    return {**pydantic_defs.get("$defs", {}), "WireClick": click}


M = TypeVar("M", bound=BaseModel)


def parsed(model: type[M], raw: bytes) -> M:
    """``raw`` as ``model``, or 400 naming every fault."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, reasons(exc.errors())) from None


def reasons(errors: Any) -> str:
    """pydantic's errors as one line: ``where: what; ...``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors
    )
