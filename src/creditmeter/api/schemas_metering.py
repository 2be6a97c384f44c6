"""Request and response bodies of metering: usage events, the gate, holds, budgets, estimates."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from creditmeter.api.problems import INVALID_UNICODE
from creditmeter.api.schemas import EventTime, PositiveCredits, Request, checked_text
from creditmeter.metering.domain import EventInput

MAX_QUANTITIES = 50
MAX_METADATA_BYTES = 8192
MAX_METADATA_DEPTH = 32


Ref = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(checked_text)]


def _depth_over(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest deeper than ``limit`` levels (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children)
    return False


def _small_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    # Deeper nesting than this cannot be stored (the JSON encoder stops at 255 levels): refuse it
    # here as bad input instead of failing later with a 500.
    if _depth_over(value, MAX_METADATA_DEPTH):
        raise ValueError(
            f"metadata may nest objects and arrays at most {MAX_METADATA_DEPTH} levels deep"
        )
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "surrogates" in str(exc):  # a key or value holding "\udc00": not text
            raise PydanticCustomError("invalid_unicode", f"metadata {INVALID_UNICODE}") from exc
        raise ValueError(
            "metadata must be plain JSON (strings, numbers within 64 bits, booleans, null, "
            "arrays and objects)"
        ) from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


Metadata = Annotated[dict[str, Any] | None, AfterValidator(_small_metadata)]
#: A quantity's name: checked in pydantic-core (a constrained string refuses a lone surrogate, type
#: ``invalid_unicode``; pinned by a test), so the hot path pays no Python call per event for it.
QuantityName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Quantities = Annotated[
    dict[QuantityName, Any],
    Field(
        max_length=MAX_QUANTITIES,
        description='Dimension -> amount as a decimal string or integer (e.g. {"input_tokens": '
        '"1200", "gpu_seconds": "3600", "accelerator": "a100"}). Floats are refused.',
    ),
]
TtlSeconds = Annotated[int, Field(ge=1, le=30 * 24 * 3600, strict=True)]


class UsageEventIn(Request):
    id: Ref = Field(description="Your id for the event: its idempotency key.")
    organization: Ref = Field(description="Organization id or external id.")
    project: Ref | None = Field(default=None, description="Project id or name.")
    member: Ref | None = Field(default=None, description="Member id or email.")
    operation: Ref
    quantities: Quantities = Field(default_factory=dict)
    occurred_at: EventTime | None = None
    cache_hit: StrictBool = False
    hold: Ref | None = Field(default=None, description="A hold this usage settles.")
    metadata: Metadata = None

    def to_input(self) -> EventInput:
        return EventInput(
            id=self.id,
            organization=self.organization,
            operation=self.operation,
            quantities=dict(self.quantities),
            project=self.project,
            member=self.member,
            occurred_at=self.occurred_at,
            cache_hit=self.cache_hit,
            hold=self.hold,
            metadata=self.metadata,
        )


@with_config(ConfigDict(extra="forbid"))
class _UsageEventFields(TypedDict):
    """The fields of :class:`UsageEventIn` with the same types and constraints, validated as a plain
    dict: a whole batch in one call, without a model instance per event. Tested to accept exactly
    what ``UsageEventIn`` accepts, with the same values."""

    id: Ref
    organization: Ref
    project: NotRequired[Ref | None]
    member: NotRequired[Ref | None]
    operation: Ref
    quantities: NotRequired[Quantities]
    occurred_at: NotRequired[EventTime | None]
    cache_hit: NotRequired[StrictBool]
    hold: NotRequired[Ref | None]
    metadata: NotRequired[Metadata]


_EVENTS = TypeAdapter(list[_UsageEventFields])


def _event_input(d: _UsageEventFields) -> EventInput:
    return EventInput(
        d["id"],
        d["organization"],
        d["operation"],
        d.get("quantities") or {},
        d.get("project"),
        d.get("member"),
        d.get("occurred_at"),
        d.get("cache_hit", False),
        d.get("hold"),
        d.get("metadata"),
    )


def parse_events(raw: list[Any]) -> list[EventInput | ValidationError]:
    """Validate every raw event of a batch on its own: the ``EventInput`` of a valid one, the
    ``ValidationError`` of ``UsageEventIn.model_validate`` (the errors a single event gets) of an
    invalid one, in request order. The whole batch is validated with one call; only when it holds an
    invalid event are the valid ones validated again without it."""
    try:
        return [_event_input(d) for d in _EVENTS.validate_python(raw)]
    except ValidationError as exc:
        bad = {int(e["loc"][0]) for e in exc.errors(include_url=False) if e["loc"]}
    out: list[EventInput | ValidationError | None] = [None] * len(raw)
    for i in bad:
        try:
            out[i] = UsageEventIn.model_validate(raw[i]).to_input()
        except ValidationError as error:
            out[i] = error
    good = [i for i in range(len(raw)) if i not in bad]
    for i, d in zip(good, _EVENTS.validate_python([raw[i] for i in good]), strict=True):
        out[i] = _event_input(d)
    return [item for item in out if item is not None]


class UsageBatchIn(Request):
    # Items are Any, not objects: an item that is not an event object is rejected on its own (its
    # result says why) while the other events apply, like any other invalid event.
    events: list[Any] = Field(
        min_length=1,
        max_length=10_000,
        description="Up to 10,000 usage events (objects shaped like the body of POST /v1/usage); "
        "each is validated and applied on its own.",
    )


class BalanceSummary(BaseModel):
    available: str
    arrears: str
    paused: bool


class BreakdownLineOut(BaseModel):
    component: str
    quantity: str | None
    rate: str | None
    credits: str


class UsageOut(BaseModel):
    id: str
    status: str
    credits: str
    breakdown: list[BreakdownLineOut]
    rate_card_version: str
    balance: BalanceSummary


class BatchResultOut(BaseModel):
    id: str
    status: str
    credits: str | None = None
    error: dict[str, Any] | None = None


class BatchOut(BaseModel):
    results: list[BatchResultOut]


class EstimateIn(Request):
    operation: Ref
    quantities: Quantities = Field(default_factory=dict)
    occurred_at: EventTime | None = None
    cache_hit: StrictBool = False


class EstimateOut(BaseModel):
    credits: str
    breakdown: list[BreakdownLineOut]
    rate_card_version: str


class AuthorizeIn(Request):
    organization: Ref
    operation: Ref
    project: Ref | None = None
    quantities: Quantities | None = None
    credits: PositiveCredits | None = None


class AuthorizeOut(BaseModel):
    allowed: bool
    reason: str = Field(
        description="ok | insufficient_credits | project_budget_exceeded | organization_suspended"
    )
    available: str
    estimated_credits: str


class HoldIn(Request):
    organization: Ref
    operation: Ref
    project: Ref | None = None
    quantities: Quantities | None = None
    credits: PositiveCredits | None = None
    ttl_seconds: TtlSeconds = 3600


class HoldExtendIn(Request):
    credits: PositiveCredits | None = Field(
        default=None, description="Credits to reserve in addition to what the hold has."
    )
    ttl_seconds: TtlSeconds | None = Field(
        default=None, description="The hold now expires this many seconds from now."
    )


class HoldSettleIn(Request):
    id: Ref = Field(description="The usage event's id (idempotency key).")
    quantities: Quantities = Field(default_factory=dict)
    occurred_at: EventTime | None = None
    cache_hit: StrictBool = False
    member: Ref | None = None
    metadata: Metadata = None


class HoldOut(BaseModel):
    id: str
    organization_id: str
    project_id: str | None
    operation: str
    credits: str
    status: str
    expires_at: datetime
    created_at: datetime


class BudgetIn(Request):
    monthly_credits: Annotated[PositiveCredits | None, Field()] = Field(
        description='The most the project may use per calendar month (UTC), e.g. "5000"; null '
        "removes the budget."
    )


class BudgetOut(BaseModel):
    project_id: str
    monthly_credits: str | None
    month: str
    used_this_month: str


class ReverseUsageIn(Request):
    reason: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
        AfterValidator(checked_text),
    ]


class ReverseUsageOut(BaseModel):
    id: str
    reversed: bool
    credits: str = Field(description="What the event cost: the credits corrected.")
    credits_returned: str = Field(
        description="Of those, the credits given back as credits. Less than `credits` when a "
        "closed invoice billed part of the event as overage: that part comes back as money on "
        "the credit note instead."
    )
    transaction_id: str
    credit_note: str | None = Field(
        default=None,
        description="The credit note issued (its number), when the event's month was invoiced.",
    )
