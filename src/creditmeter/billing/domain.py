"""The pure rules of billing: plans, billing periods, expiry instants, proration and prices.

No I/O here: every function takes the instants, zones and amounts it needs and returns a value.

- **Periods** are calendar months, half-open ``[1st 00:00, next 1st 00:00)`` in the operator's
  billing time zone, expressed as UTC instants. A local midnight that does not exist (a daylight-saving
  gap at midnight) resolves to the first instant after the gap; one that happens twice resolves to the
  first of the two. Either way consecutive periods touch exactly: every instant lies in one period.
- **Plan lots**: the lot allocated for cycle N expires at the end of cycle N + ``rollover_cycles``
  (Standard 0: the end of its own cycle; Professional 3), or never (``rollover_cycles = None``).
- **Purchased lots** expire ``purchase_expiry_months`` after the purchase, on the same day of the month
  at the same local wall time in the billing time zone; a day the target month lacks is clamped to its
  last day (bought 31 January, one month: 28 or 29 February; bought 29 February 2028, twelve months:
  28 February 2029).
- **Proration** scales an amount by the share of the period still to run, measured in whole
  microseconds of real (UTC) time, so a 743-hour or 745-hour daylight-saving month is prorated by its
  true length. The exact fraction is rounded ONCE, half to even, to a whole micro-credit (allocations)
  or a whole minor unit (fees). It never exceeds the full amount and never grows as time passes.
- **Money** is integer minor units plus an ISO 4217 currency. A price per credit is held in millionths
  of the currency's major unit (the ledger's ``cost_basis_micros`` unit: USD 0.05 = 50_000). The price of
  N credits is ``N x price``, rounded once, half to even, to a whole minor unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from fractions import Fraction
from typing import Any, Literal

from creditmeter.kit.credits import MICROS_PER_CREDIT, format_credits

#: ISO 4217 currencies whose minor unit is not a hundredth (all others have two decimals).
_CURRENCY_EXPONENTS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}
#: Price per credit is held in millionths of the major unit.
PRICE_SCALE = 1_000_000
_MICROSECOND = timedelta(microseconds=1)


def currency_exponent(currency: str) -> int:
    """Decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    return _CURRENCY_EXPONENTS.get(currency, 2)


def format_money(amount_minor: int, currency: str) -> str:
    """Minor units as a decimal string in the major unit: (4900, "USD") -> ``"49.00"``."""
    places = currency_exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    if places == 0:
        return f"{sign}{abs(amount_minor)}"
    whole, frac = divmod(abs(amount_minor), 10**places)
    return f"{sign}{whole}.{frac:0{places}d}"


def format_price(price_micros: int) -> str:
    """A price per credit (millionths of the major unit) as the shortest exact decimal string."""
    return format_credits(price_micros)


# ---- periods ---------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Period:
    """One billing cycle: ``[start, end)`` in UTC; ``year``/``month`` name it in the billing zone."""

    start: datetime
    end: datetime
    year: int
    month: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def contains(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def _shift_month(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def month_start(year: int, month: int, zone: tzinfo) -> datetime:
    """The UTC instant of local midnight on the 1st (fold 0: the earlier of two, or the gap's end)."""
    # Inside a gap, fold 0 reads the wall time with the offset from before the gap (PEP 495): the
    # instant that gives is the gap's end, the first local time of the 1st.
    return datetime(year, month, 1, tzinfo=zone).astimezone(UTC)


def period(year: int, month: int, zone: tzinfo) -> Period:
    """The billing period named by its month in the billing time zone."""
    next_year, next_month = _shift_month(year, month, 1)
    return Period(
        month_start(year, month, zone), month_start(next_year, next_month, zone), year, month
    )


def period_of(instant: datetime, zone: tzinfo) -> Period:
    """The one period that contains ``instant`` (aware)."""
    local = instant.astimezone(zone)
    candidate = period(local.year, local.month, zone)
    while instant < candidate.start:
        candidate = shift(candidate, -1, zone)
    while instant >= candidate.end:
        candidate = shift(candidate, 1, zone)
    return candidate


def shift(of: Period, cycles: int, zone: tzinfo) -> Period:
    """The period ``cycles`` months after (or before, if negative) ``of``."""
    return period(*_shift_month(of.year, of.month, cycles), zone)


# ---- expiry ----------------------------------------------------------------------------------


def plan_lot_expiry(
    allocated_for: Period, rollover_cycles: int | None, zone: tzinfo
) -> datetime | None:
    """When the plan lot allocated for cycle N expires: the end of cycle N + ``rollover_cycles``
    (None: never). The lot is spendable up to, not at, that instant."""
    if rollover_cycles is None:
        return None
    if rollover_cycles < 0:
        raise ValueError("rollover_cycles cannot be negative")
    return shift(allocated_for, rollover_cycles, zone).end


def add_months(instant: datetime, months: int, zone: tzinfo) -> datetime:
    """``months`` calendar months after ``instant``: the same local wall time on the same day of the
    month in ``zone``, the day clamped to the target month's last day."""
    local = instant.astimezone(zone)
    year, month = _shift_month(local.year, local.month, months)
    day = min(local.day, _days_in_month(year, month))
    moved = local.replace(year=year, month=month, day=day, tzinfo=None)
    return moved.replace(tzinfo=zone).astimezone(UTC)


def purchase_expiry(purchased_at: datetime, months: int | None, zone: tzinfo) -> datetime | None:
    """When credits bought at ``purchased_at`` expire (None: never); see :func:`add_months`."""
    if months is None:
        return None
    if months <= 0:
        raise ValueError("purchase expiry is a positive number of months, or never")
    return add_months(purchased_at, months, zone)


def _days_in_month(year: int, month: int) -> int:
    next_year, next_month = _shift_month(year, month, 1)
    return (datetime(next_year, next_month, 1) - datetime(year, month, 1)).days  # noqa: DTZ001


# ---- proration and prices --------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """The share of a period still to run at an instant, in whole microseconds."""

    remaining_us: int
    total_us: int

    @property
    def full(self) -> bool:
        return self.remaining_us == self.total_us


def share_remaining(of: Period, at: datetime) -> Share:
    """The part of ``of`` from ``at`` to its end. ``at`` must lie inside the period."""
    if not of.contains(at):
        raise ValueError(f"{at.isoformat()} is not inside the period {of.label}")
    return Share((of.end - at) // _MICROSECOND, (of.end - of.start) // _MICROSECOND)


def prorate(amount: int, share: Share) -> int:
    """``amount x remaining / total``, rounded once, half to even, to a whole unit. For
    ``0 <= amount`` the result lies in ``[0, amount]`` and never grows as ``remaining`` shrinks."""
    if share.full:
        return amount
    return round(Fraction(amount * share.remaining_us, share.total_us))


def purchase_price_minor(credits_micros: int, price_micros: int, currency: str) -> int:
    """The price of ``credits_micros`` at ``price_micros`` (millionths of the major unit per credit),
    in minor units, rounded once, half to even."""
    minor_per_major = 10 ** currency_exponent(currency)
    exact = Fraction(
        credits_micros * price_micros * minor_per_major, MICROS_PER_CREDIT * PRICE_SCALE
    )
    return round(exact)


def cost_basis_micros(fee_minor: int, credits_micros: int, currency: str) -> int:
    """Money paid per credit (millionths of the major unit) when ``fee_minor`` bought
    ``credits_micros``: the ledger's cost basis of a plan lot. Rounded once, half to even."""
    if credits_micros <= 0:
        return 0
    minor_per_major = 10 ** currency_exponent(currency)
    exact = Fraction(fee_minor * PRICE_SCALE * MICROS_PER_CREDIT, minor_per_major * credits_micros)
    return round(exact)


# ---- plans, packages and subscription terms ---------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A plan as the operator configured it. ``allocation_micros`` None: set per subscription
    (``custom_terms``); ``rollover_cycles`` None: plan credits never expire."""

    id: str
    name: str
    description: str
    monthly_fee_minor: int
    currency: str
    allocation_micros: int | None
    rollover_cycles: int | None
    custom_terms: bool
    credit_price_micros: int
    purchase_expiry_months: int | None
    overage_in_arrears: bool
    packages_on_account: bool = False
    cancel_after_dunning: bool = False


@dataclass(frozen=True)
class Package:
    id: str
    name: str
    description: str
    credits_micros: int


@dataclass(frozen=True)
class CustomPackages:
    """Bounds of a custom purchase: a multiple of ``step`` between ``min`` and ``max`` credits."""

    min_micros: int
    max_micros: int
    step_micros: int

    def problem(self, credits_micros: int) -> str | None:
        """Why ``credits_micros`` is not a valid custom amount, or None if it is."""
        if not self.min_micros <= credits_micros <= self.max_micros:
            return (
                f"a custom amount is between {format_credits(self.min_micros)} and "
                f"{format_credits(self.max_micros)} credits"
            )
        if credits_micros % self.step_micros:
            return f"a custom amount is a multiple of {format_credits(self.step_micros)} credits"
        return None


@dataclass(frozen=True)
class Seller:
    """Who issues the invoices: the operator, as printed at the top of every invoice."""

    name: str = "creditmeter operator"
    address: tuple[str, ...] = ()
    email: str = ""
    website: str = ""
    tax_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": list(self.address),
            "email": self.email,
            "website": self.website,
            "tax_id": self.tax_id,
        }


@dataclass(frozen=True)
class Invoicing:
    """How invoices are numbered and when they are due."""

    number_prefix: str = "INV"
    payment_terms_days: int = 14


@dataclass(frozen=True)
class Catalog:
    """The operator's plans and packages, the billing time zone, the seller and the invoicing
    settings, as loaded from one file."""

    time_zone: str
    zone: tzinfo
    plans: dict[str, Plan]
    packages: dict[str, Package]
    custom_packages: CustomPackages
    source: str
    seller: Seller = Seller()
    invoicing: Invoicing = Invoicing()

    def plan(self, plan_id: str) -> Plan | None:
        return self.plans.get(plan_id)


@dataclass(frozen=True)
class Terms:
    """What a subscription gives and costs each cycle: the plan's settings with any per-subscription
    overrides applied, snapshotted so a later change to the plans file never rewrites a contract."""

    plan: str
    plan_name: str
    allocation_micros: int
    rollover_cycles: int | None
    monthly_fee_minor: int
    currency: str
    credit_price_micros: int
    purchase_expiry_months: int | None
    overage_in_arrears: bool
    #: Packages may be bought on account (billed on the next invoice) instead of charged at once.
    #: False in snapshots taken before the setting existed.
    packages_on_account: bool = False
    #: The subscription is canceled (at the end of the cycle) when an invoice's dunning is
    #: exhausted. False in snapshots taken before the setting existed.
    cancel_after_dunning: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "plan_name": self.plan_name,
            "allocation_micros": self.allocation_micros,
            "rollover_cycles": self.rollover_cycles,
            "monthly_fee_minor": self.monthly_fee_minor,
            "currency": self.currency,
            "credit_price_micros": self.credit_price_micros,
            "purchase_expiry_months": self.purchase_expiry_months,
            "overage_in_arrears": self.overage_in_arrears,
            "packages_on_account": self.packages_on_account,
            "cancel_after_dunning": self.cancel_after_dunning,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Terms:
        return cls(**data)


class TermsError(ValueError):
    """Per-subscription terms that the plan does not allow; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


#: A per-subscription rollover as requested: cycles, ``"never"``, or None (not given: the plan's).
Rollover = int | Literal["never"] | None


def terms_for(plan: Plan, allocation_micros: int | None = None, rollover: Rollover = None) -> Terms:
    """The terms of a subscription to ``plan``. Only a ``custom_terms`` plan accepts an allocation
    or a rollover; it needs an allocation when the plan itself has none."""
    if not plan.custom_terms:
        if allocation_micros is not None:
            raise TermsError(
                "allocation_credits",
                f"the {plan.id} plan allocates a fixed amount each cycle; omit allocation_credits",
            )
        if rollover is not None:
            raise TermsError(
                "rollover_cycles",
                f"the {plan.id} plan has a fixed rollover; omit rollover_cycles",
            )
    allocation_ = allocation_micros if allocation_micros is not None else plan.allocation_micros
    if allocation_ is None:
        raise TermsError(
            "allocation_credits",
            f"the {plan.id} plan's allocation is set per subscription; send allocation_credits",
        )
    rollover_cycles = plan.rollover_cycles
    if rollover is not None:
        rollover_cycles = None if rollover == "never" else rollover
    return Terms(
        plan=plan.id,
        plan_name=plan.name,
        allocation_micros=allocation_,
        rollover_cycles=rollover_cycles,
        monthly_fee_minor=plan.monthly_fee_minor,
        currency=plan.currency,
        credit_price_micros=plan.credit_price_micros,
        purchase_expiry_months=plan.purchase_expiry_months,
        overage_in_arrears=plan.overage_in_arrears,
        packages_on_account=plan.packages_on_account,
        cancel_after_dunning=plan.cancel_after_dunning,
    )


def operator_only_reason(plan: Plan) -> str | None:
    """Why only an operator may put an organization on ``plan``, or None when the organization's
    own key may choose it as published. Terms set per contract (``custom_terms``: allocation,
    rollover) and terms that extend credit (``overage_in_arrears``: usage beyond the credits billed
    later; ``packages_on_account``: credits granted before they are paid for) are the operator's
    to give: a customer choosing them would mint credits."""
    if plan.custom_terms:
        return f"the {plan.id} plan's terms are set per contract"
    if plan.overage_in_arrears:
        return f"the {plan.id} plan invoices overage in arrears (credit extended)"
    if plan.packages_on_account:
        return f"the {plan.id} plan sells packages on account (credit extended)"
    return None


class Change(StrEnum):
    SAME = "same"
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"


def classify_change(current: Terms, desired: Terms) -> Change:
    """An upgrade gives at least as many credits for at least the same fee, and more of one of them;
    it takes effect at once. Identical terms are no change. Anything else (fewer credits, a lower
    fee, another rollover, a cheaper price per credit, ...) is a downgrade: it waits for the next
    cycle, so nothing already allocated or billed for this cycle is taken back."""
    if desired == current:
        return Change.SAME
    more_or_equal = (
        desired.allocation_micros >= current.allocation_micros
        and desired.monthly_fee_minor >= current.monthly_fee_minor
        and desired.currency == current.currency
    )
    strictly_more = (
        desired.allocation_micros > current.allocation_micros
        or desired.monthly_fee_minor > current.monthly_fee_minor
    )
    if more_or_equal and strictly_more:
        return Change.UPGRADE
    return Change.DOWNGRADE


@dataclass(frozen=True)
class Allocation:
    """Credits and fee for one allocation inside a period: the full cycle, the rest of the cycle
    (a first subscription), or the difference an upgrade makes for the rest of the cycle."""

    credits_micros: int
    fee_minor: int
    share: Share
    expires_at: datetime | None


def allocation(
    terms: Terms,
    of: Period,
    at: datetime,
    zone: tzinfo,
    previous: Terms | None = None,
) -> Allocation:
    """What to allocate and bill at ``at`` inside ``of``: ``terms`` prorated by the time left, minus
    what ``previous`` terms (an upgrade's old plan) give for the same time. The lot expires by the
    rule of ``terms``."""
    share = share_remaining(of, at)
    credits = terms.allocation_micros - (previous.allocation_micros if previous else 0)
    fee = terms.monthly_fee_minor - (previous.monthly_fee_minor if previous else 0)
    return Allocation(
        credits_micros=prorate(credits, share),
        fee_minor=prorate(fee, share),
        share=share,
        expires_at=plan_lot_expiry(of, terms.rollover_cycles, zone),
    )


# ---- cycle close and invoices -----------------------------------------------------------------

_MONTH_NAMES = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def group_digits(decimal_text: str) -> str:
    """``"1234567.5"`` -> ``"1,234,567.5"`` (thousands separators for people; exact digits kept)."""
    sign = "-" if decimal_text.startswith("-") else ""
    whole, dot, frac = decimal_text.lstrip("-").partition(".")
    return f"{sign}{int(whole):,}{dot}{frac}"


def month_name(of: Period) -> str:
    """``"January 2026"``."""
    return f"{_MONTH_NAMES[of.month - 1]} {of.year}"


def periods_due(first: Period, now: datetime, zone: tzinfo) -> list[Period]:
    """``first`` and each period after it that has ended by ``now`` (a period is closed at its
    end, the 1st 00:00 of the next month), oldest first: the boundaries a catch-up crosses."""
    due = []
    current = first
    while current.end <= now:
        due.append(current)
        current = shift(current, 1, zone)
    return due


def invoice_series(prefix: str, environment: str, year: int) -> str:
    """Invoice numbers run per year and per environment: ``INV-2026``, ``INV-TEST-2026``."""
    return f"{prefix}-TEST-{year}" if environment == "test" else f"{prefix}-{year}"


def invoice_number(series: str, number: int) -> str:
    """``INV-2026-000001``: at least six digits, so numbers sort as text within a series."""
    if number <= 0:
        raise ValueError("invoice numbers start at 1")
    return f"{series}-{number:06d}"


def allocation_line_kind(share: Share) -> Literal["plan_fee", "proration"]:
    """A full cycle's fee is a ``plan_fee`` line; a part of a cycle is a ``proration``."""
    return "plan_fee" if share.full else "proration"


def describe_allocation(
    kind: str, plan_name: str, of: Period, start: datetime, zone: tzinfo
) -> str:
    """The text of an invoice line for a plan allocation: what, which plan, which time."""
    what = f"Upgrade to {plan_name}" if kind == "upgrade" else f"{plan_name} plan"
    if start <= of.start:
        return f"{what}, {month_name(of)}"
    first = start.astimezone(zone)
    last = (of.end - _MICROSECOND).astimezone(zone)
    return (
        f"{what}, {first.day} to {last.day} {month_name(of)} "
        f"(prorated from {first:%Y-%m-%d %H:%M} {first.tzname()})"
    )


def describe_package(
    package_name: str | None, credits_micros: int, bought_at: datetime, zone: tzinfo
) -> str:
    """The text of an invoice line for a purchase on account: ``"Professional package (5,000
    credits), bought 12 January 2026"`` (the day in the billing time zone); a custom amount is a
    ``"Custom package"``."""
    credits = group_digits(format_credits(credits_micros))
    return (
        f"{package_name or 'Custom package'} ({credits} credits), bought "
        f"{describe_day(bought_at, zone)}"
    )


def describe_day(instant: datetime, zone: tzinfo) -> str:
    """``"12 January 2026"``: the day of ``instant`` in the billing time zone."""
    day = instant.astimezone(zone)
    return f"{day.day} {_MONTH_NAMES[day.month - 1]} {day.year}"


# ---- refunds ------------------------------------------------------------------------------------


def refund_credits_micros(
    refunded_minor: int, amount_minor: int, paid_minor: int, credits_micros: int
) -> int:
    """The credits a refund of ``amount_minor`` takes back of a purchase that paid ``paid_minor`` for
    ``credits_micros``, when ``refunded_minor`` of it is already refunded (or being refunded): the
    credits in proportion to the money, at the purchase's own price per credit, rounded up to a
    whole micro-credit so the organization never keeps credits it got money back for. Computed
    cumulatively (credits of everything refunded so far, minus those of what was refunded before),
    so partial refunds that add up to the whole purchase take back exactly its credits."""
    if not 0 < amount_minor <= paid_minor - refunded_minor:
        raise ValueError("a refund is positive and at most what is left of the payment")

    def upto(minor: int) -> int:
        return -(-minor * credits_micros // paid_minor)

    return upto(refunded_minor + amount_minor) - upto(refunded_minor)


def refundable_for_credits(
    refunded_minor: int, spare_micros: int, paid_minor: int, credits_micros: int
) -> int:
    """The largest refund (minor units) whose credits (:func:`refund_credits_micros`) fit in
    ``spare_micros``: what the operator can still refund when some of the credits were spent."""
    reachable = -(-refunded_minor * credits_micros // paid_minor) + spare_micros
    most = min(paid_minor, reachable * paid_minor // credits_micros)
    return max(0, most - refunded_minor)
