"""Request and response bodies of the v1 API. Credits travel as decimal strings; requests reject
unknown fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from creditmeter.api.jsonio import is_text
from creditmeter.api.problems import INVALID_UNICODE
from creditmeter.kit.credits import (
    MAX_CREDITS_MICROS,
    CreditsFormatError,
    format_credits,
    parse_credits,
)
from creditmeter.ledger.domain import LotSource
from creditmeter.orgs.service import Environment, Role, Scope

#: No amount needs more characters than this ("1000000000000.000000" is 20); longer input is refused
#: before it is parsed, and the error does not echo it.
MAX_CREDITS_TEXT = 40
#: Timestamps accepted on the API (converting the extremes to UTC would overflow).
MIN_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP = datetime(9999, 12, 30, tzinfo=UTC)


def _positive_credits(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            'credits must be a decimal string such as "12.5", not a JSON number '
            "(numbers lose precision)"
        )
    if len(value) > MAX_CREDITS_TEXT:
        raise ValueError(
            f"credits is {len(value)} characters long; the largest amount is "
            f'{format_credits(MAX_CREDITS_MICROS)}: send a decimal string such as "12.5"'
        )
    try:
        micros = parse_credits(value)
    except CreditsFormatError as exc:
        raise ValueError(str(exc)) from exc
    if micros <= 0:
        raise ValueError(f'credits must be greater than zero (got "{value}"); send e.g. "1000"')
    return micros


def _money_per_credit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError('cost_basis must be a decimal string such as "0.01", not a JSON number')
    if len(value) > MAX_CREDITS_TEXT:
        raise ValueError('cost_basis is too long; send a decimal string such as "0.01"')
    try:
        micros = parse_credits(value)
    except CreditsFormatError as exc:
        raise ValueError(str(exc).replace("credits", "cost_basis")) from exc
    if micros < 0:
        raise ValueError('cost_basis cannot be negative; send "0" for free credits')
    return micros


def checked_text(value: str) -> str:
    """The one check of text a client sends (every name, reason, id and reference): valid Unicode
    (no lone surrogate such as ``"\\udc00"``, which cannot be stored or sent back; field type
    ``invalid_unicode``) without NUL. Cheap: ASCII text is one C-level scan."""
    if not is_text(value):
        raise PydanticCustomError("invalid_unicode", INVALID_UNICODE)
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000); remove it")
    return value


TIMESTAMP_OUT_OF_RANGE = (
    "is out of range; send an RFC 3339 timestamp between 1970-01-01T00:00:00Z and "
    "9999-12-30T00:00:00Z"
)


def utc_in_range(value: datetime) -> datetime | None:
    """``value`` in UTC, or None when converting it would overflow or it lies outside the range the
    API accepts (``0001-01-01T00:00:00+01:00`` is before year 1 in UTC)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        return None
    return utc if MIN_TIMESTAMP <= utc <= MAX_TIMESTAMP else None


def _utc_timestamp(value: datetime) -> datetime:
    utc = utc_in_range(value)
    if utc is None:
        raise PydanticCustomError("timestamp_out_of_range", TIMESTAMP_OUT_OF_RANGE)
    return utc


def _timestamp_in_range(value: datetime) -> datetime:
    if utc_in_range(value) is None:
        raise PydanticCustomError("timestamp_out_of_range", TIMESTAMP_OUT_OF_RANGE)
    return value


PositiveCredits = Annotated[
    int,
    BeforeValidator(_positive_credits),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[0-9]+(\.[0-9]{1,6})?$",
            "examples": ["1000", "12.5"],
            "description": "Credits as a decimal string with at most 6 decimal places.",
        }
    ),
]
MoneyPerCredit = Annotated[
    int,
    BeforeValidator(_money_per_credit),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^[0-9]+(\.[0-9]{1,6})?$",
            "examples": ["0.01"],
            "description": "Money paid per credit, in the currency's major unit, as a decimal string.",
        }
    ),
]
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(checked_text),
]
Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
    AfterValidator(checked_text),
]
#: An aware timestamp, converted to UTC; out-of-range values are a 422 (field type
#: ``timestamp_out_of_range``), not an overflow later. Every timestamp the API accepts is one of these
#: two types.
Timestamp = Annotated[AwareDatetime, AfterValidator(_utc_timestamp)]
#: A :data:`Timestamp` kept with the offset it was sent with (a usage event's ``occurred_at``: the
#: event's fingerprint covers the text sent), checked the same way.
EventTime = Annotated[AwareDatetime, AfterValidator(_timestamp_in_range)]

T = TypeVar("T")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None


class OrganizationCreate(Request):
    name: Name
    external_id: Name | None = None


class OrganizationOut(BaseModel):
    id: str
    name: str
    external_id: str | None
    status: str
    created_at: datetime


class ProjectCreate(Request):
    name: Name


class ProjectOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class MemberCreate(Request):
    email: EmailStr
    role: Role


class MemberOut(BaseModel):
    id: str
    email: str
    role: str
    created_at: datetime


class ApiKeyCreate(Request):
    name: Name
    scopes: list[Scope] = Field(min_length=1)
    environment: Environment = Environment.LIVE


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    environment: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret. Shown only in this response; store it now.")


class GrantCreate(Request):
    credits: PositiveCredits
    source: LotSource
    reason: Reason
    expires_at: Timestamp | None = None
    effective_at: Timestamp | None = None
    priority: int = Field(default=100, ge=0, le=1_000_000, strict=True)
    cost_basis: MoneyPerCredit | None = None


class LotOut(BaseModel):
    id: str
    source: str
    credits: str
    remaining: str
    effective_at: datetime
    expires_at: datetime | None
    priority: int
    cost_basis: str
    currency: str
    reason: str
    created_at: datetime


class LotSummary(BaseModel):
    id: str
    source: str
    remaining: str
    effective_at: datetime
    expires_at: datetime | None
    priority: int


class BalanceOut(BaseModel):
    organization_id: str
    environment: str
    available: str
    arrears: str
    held: str
    paused: bool
    lots: list[LotSummary] = Field(
        description="Lots with credits left: spendable lots in the order they pay, then lots not "
        "yet effective."
    )


class PostingOut(BaseModel):
    account: str
    lot_id: str | None
    credits: str


class JournalTransactionOut(BaseModel):
    id: str
    kind: str
    description: str
    environment: str
    reverses: str | None
    created_at: datetime
    postings: list[PostingOut]


class ReverseRequest(Request):
    reason: Reason
