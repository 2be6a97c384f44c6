"""Loading the plans file: TOML in, validated ``Catalog`` out.

``load_catalog(path)`` reads ``path``, else the file named by ``CREDITMETER_PLANS``, else the default
that ships in this package (``default_plans.toml``, documented line by line), and caches the result per
path. The document is validated by pydantic models; every problem is reported at once, each naming the
file and the key (``PlansError``, a configuration error).
"""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from creditmeter.billing.domain import (
    Catalog,
    CustomPackages,
    Invoicing,
    Package,
    Plan,
    Seller,
)
from creditmeter.errors import CreditmeterError
from creditmeter.kit.config_file import ConfigFile
from creditmeter.kit.credits import MAX_CREDITS_MICROS, CreditsFormatError, parse_credits

PLANS_ENV = "CREDITMETER_PLANS"
DEFAULT_PLANS = "default_plans.toml"
DEFAULT_SOURCE = f"creditmeter/billing/{DEFAULT_PLANS} (built in)"
#: The longest rollover and purchase expiry a plan may set, in months.
MAX_MONTHS = 120
#: The largest monthly fee, in minor units.
MAX_FEE_MINOR = 10**12
#: The largest price per credit, in the currency's major unit.
MAX_CREDIT_PRICE_MICROS = 10**6 * 10**6

_ID_RE = r"^[a-z][a-z0-9_-]{0,39}$"


class PlansError(CreditmeterError):
    """The operator's plans file is unreadable or invalid: a configuration error (500)."""

    code = "invalid_plans"
    status_code = 500
    title = "Invalid plans file"


def _micros(value: Any, *, allow_zero: bool = False) -> int:
    """Credits or a price per credit: a quoted decimal string (or a whole number), never a float."""
    if isinstance(value, float):
        raise ValueError(
            f'write it as a quoted decimal string, e.g. "{value}" (floats are inexact)'
        )
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError('write a quoted decimal string such as "1000"')
    try:
        micros = parse_credits(value)
    except CreditsFormatError as exc:
        raise ValueError(str(exc)) from exc
    if micros < 0 or (micros == 0 and not allow_zero):
        raise ValueError(f'must be greater than zero (got "{value}")')
    return micros


def _months(value: Any) -> int | None:
    if value == "never":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'write a whole number of months (0-{MAX_MONTHS}) or "never"')
    if not 0 <= value <= MAX_MONTHS:
        raise ValueError(f'write a whole number of months from 0 to {MAX_MONTHS}, or "never"')
    return value


def _fee(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            "write the fee as a whole number of minor units (cents for USD), e.g. 4900 for 49.00"
        )
    if not 0 <= value <= MAX_FEE_MINOR:
        raise ValueError(f"a fee is from 0 to {MAX_FEE_MINOR} minor units")
    return value


Credits = Annotated[int, BeforeValidator(_micros)]
Months = Annotated[int | None, BeforeValidator(_months)]
FeeMinor = Annotated[int, BeforeValidator(_fee)]
Text = Annotated[str, StringConstraints(max_length=500)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlanConfig(_Strict):
    name: Name
    description: Text = ""
    monthly_fee: FeeMinor
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
    allocation_credits: Credits | None = None
    rollover_cycles: Months = 0
    custom_terms: bool = False
    credit_price: Credits
    purchase_expiry_months: Months = 12
    overage_in_arrears: bool = False
    packages_on_account: StrictBool = False  # a TOML true/false, never "yes" or 1
    cancel_after_dunning: StrictBool = False

    @field_validator("credit_price")
    @classmethod
    def _price_bound(cls, value: int) -> int:
        if value > MAX_CREDIT_PRICE_MICROS:
            raise ValueError("a price per credit is at most 1000000 (in the major unit)")
        return value

    @field_validator("purchase_expiry_months")
    @classmethod
    def _positive_expiry(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError('purchased credits last at least 1 month; write 1-120 or "never"')
        return value

    @model_validator(mode="after")
    def _allocation_needed(self) -> PlanConfig:
        if self.allocation_credits is None and not self.custom_terms:
            raise ValueError(
                "allocation_credits is required unless custom_terms = true (then each "
                "subscription sets its own)"
            )
        return self


class PackageConfig(_Strict):
    name: Name
    description: Text = ""
    credits: Credits


class CustomPackagesConfig(_Strict):
    min_credits: Credits
    max_credits: Credits
    step_credits: Credits

    @model_validator(mode="after")
    def _bounds(self) -> CustomPackagesConfig:
        if self.max_credits < self.min_credits:
            raise ValueError("max_credits must be at least min_credits")
        if self.min_credits % self.step_credits or self.max_credits % self.step_credits:
            raise ValueError("min_credits and max_credits must be multiples of step_credits")
        if self.max_credits > MAX_CREDITS_MICROS:
            raise ValueError("max_credits is larger than the largest amount")
        return self


Line = Annotated[str, StringConstraints(max_length=200)]


class SellerConfig(_Strict):
    """The operator as printed on invoices."""

    name: Name
    address: list[Line] = Field(default_factory=list, max_length=6)
    email: Line = ""
    website: Line = ""
    tax_id: Line = ""


class InvoicesConfig(_Strict):
    number_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9]{0,7}$")] = "INV"
    payment_terms_days: Annotated[int, Field(ge=0, le=120, strict=True)] = 14


Id = Annotated[str, StringConstraints(pattern=_ID_RE)]


class PlansFile(_Strict):
    time_zone: str = "UTC"
    plans: dict[Id, PlanConfig] = Field(min_length=1)
    packages: dict[Id, PackageConfig] = Field(default_factory=dict)
    custom_packages: CustomPackagesConfig
    seller: SellerConfig = SellerConfig(name="creditmeter operator")
    invoices: InvoicesConfig = InvoicesConfig()

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        _zone(value)
        return value

    @model_validator(mode="after")
    def _one_currency(self) -> PlansFile:
        currencies = sorted({plan.currency for plan in self.plans.values()})
        if len(currencies) > 1:
            raise ValueError(
                f"every plan must use one currency (found {', '.join(currencies)}): a plan change "
                "compares fees"
            )
        return self


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f'unknown time zone {name!r}; use an IANA name such as "Europe/Berlin"'
        ) from exc


def load_catalog(path: str | None = None) -> Catalog:
    """The plans at ``path``, else ``$CREDITMETER_PLANS``, else the built-in default; cached."""
    return _FILE.load(path)


def clear_catalog_cache() -> None:
    """Forget parsed files, so the next ``load_catalog`` re-reads its file."""
    _FILE.clear()


def parse_catalog(data: bytes | str, source: str) -> Catalog:
    """Validate a plans document; raise a ``PlansError`` listing every problem."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PlansError(f"plans file {source} is not valid TOML: {exc}") from exc
    try:
        parsed = PlansFile.model_validate(document)
    except ValidationError as exc:
        raise _problems(exc, source) from None
    return Catalog(
        time_zone=parsed.time_zone,
        zone=_zone(parsed.time_zone),
        plans={plan_id: _plan(plan_id, p) for plan_id, p in parsed.plans.items()},
        packages={
            pid: Package(pid, p.name, p.description, p.credits)
            for pid, p in sorted(parsed.packages.items(), key=lambda item: item[1].credits)
        },
        custom_packages=CustomPackages(
            parsed.custom_packages.min_credits,
            parsed.custom_packages.max_credits,
            parsed.custom_packages.step_credits,
        ),
        source=source,
        seller=Seller(
            name=parsed.seller.name,
            address=tuple(parsed.seller.address),
            email=parsed.seller.email,
            website=parsed.seller.website,
            tax_id=parsed.seller.tax_id,
        ),
        invoicing=Invoicing(
            number_prefix=parsed.invoices.number_prefix,
            payment_terms_days=parsed.invoices.payment_terms_days,
        ),
    )


def _plan(plan_id: str, p: PlanConfig) -> Plan:
    return Plan(
        id=plan_id,
        name=p.name,
        description=p.description,
        monthly_fee_minor=p.monthly_fee,
        currency=p.currency,
        allocation_micros=p.allocation_credits,
        rollover_cycles=p.rollover_cycles,
        custom_terms=p.custom_terms,
        credit_price_micros=p.credit_price,
        purchase_expiry_months=p.purchase_expiry_months,
        overage_in_arrears=p.overage_in_arrears,
        packages_on_account=p.packages_on_account,
        cancel_after_dunning=p.cancel_after_dunning,
    )


def _problems(exc: ValidationError, source: str) -> PlansError:
    items = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "(file)"
        message = re.sub(r"^(Value|Assertion) error, ", "", error["msg"])
        if error["type"] == "extra_forbidden":
            message = "unknown key; see the documented keys in default_plans.toml"
        elif error["type"] == "string_pattern_mismatch" and where.endswith("number_prefix"):
            message = '1 to 8 capital letters or digits, starting with a letter, e.g. "INV"'
        elif error["type"] == "string_pattern_mismatch" and where.endswith("currency"):
            message = 'write an ISO 4217 code in capitals, e.g. "USD"'
        elif error["type"] == "string_pattern_mismatch":
            message = "ids are lower-case letters, digits, '_' and '-', starting with a letter"
        items.append((where, message))
    shown = "; ".join(f"{where}: {message}" for where, message in items[:5])
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return PlansError(
        f"invalid plans file {source}: {shown}{more}",
        errors=[
            {"field": where, "message": message, "type": "invalid_plans"}
            for where, message in items
        ],
    )


_FILE: ConfigFile[Catalog] = ConfigFile(
    package="creditmeter.billing",
    default_name=DEFAULT_PLANS,
    env_var=PLANS_ENV,
    what="plans file",
    parse=parse_catalog,
    error=PlansError,
)
