"""Loading the rate card: TOML in, validated and precomputed ``RateCard`` out.

``load_rate_card(path)`` reads ``path``, else the file named by ``CREDITMETER_RATE_CARD``, else the
default that ships in this package, and caches the parsed card per path. Every problem in a file is
reported at once, each naming the file, the version and the key (``RateCardError``).
"""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from creditmeter.errors import CreditmeterError
from creditmeter.kit.config_file import ConfigFile
from creditmeter.pricing.domain import (
    EXACT,
    GPU_SECONDS,
    SELECTORS,
    OffPeak,
    OperationRates,
    Rate,
    RateCard,
    RateCardVersion,
    decimal_text,
)

RATE_CARD_ENV = "CREDITMETER_RATE_CARD"
DEFAULT_RATE_CARD = "default_rate_card.toml"
DEFAULT_SOURCE = f"creditmeter/pricing/{DEFAULT_RATE_CARD} (built in)"
#: Rates are at most this precise and this large (credits per unit); charges and multipliers likewise.
MAX_RATE_DECIMALS = 18
MAX_RATE = Decimal(10**6)
MAX_CHARGE = Decimal(10**9)
MAX_MULTIPLIER = Decimal(1000)
MAX_MULTIPLIER_DECIMALS = 12

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_DIMENSION_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_VERSION_KEYS = {
    "version", "effective_at", "description", "extends", "off_peak", "cache_hit", "operations",
}  # fmt: skip
_OPERATION_KEYS = {
    "description", "base", "minimum", "rates", "default_accelerator", "instance_classes",
    "default_instance_class", "off_peak", "cache_hit_multiplier",
}  # fmt: skip
_OFF_PEAK_KEYS = {"time_zone", "windows", "multiplier"}


class RateCardError(CreditmeterError):
    """The operator's rate card file is unreadable or invalid: a configuration error (500)."""

    code = "invalid_rate_card"
    status_code = 500
    title = "Invalid rate card"


def load_rate_card(path: str | None = None) -> RateCard:
    """The rate card at ``path``, else ``$CREDITMETER_RATE_CARD``, else the built-in default; cached."""
    return _FILE.load(path)


def clear_rate_card_cache() -> None:
    """Forget parsed cards, so the next ``load_rate_card`` re-reads its file."""
    _FILE.clear()


def parse_rate_card(data: bytes | str, source: str) -> RateCard:
    """Validate a rate card document and precompute every version; raise listing all problems."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        document = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RateCardError(f"rate card {source} is not valid TOML: {exc}") from exc
    problems = _Problems(source)
    versions = _versions(document, problems)
    problems.raise_if_any()
    return RateCard(tuple(sorted(versions, key=lambda v: v.effective_at)), source)


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, message: str) -> None:
        self.items.append((where, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = "; ".join(f"{where}: {message}" for where, message in self.items[:5])
        more = f" (and {len(self.items) - 5} more)" if len(self.items) > 5 else ""
        raise RateCardError(
            f"invalid rate card {self.source}: {shown}{more}",
            errors=[
                {"field": where, "message": message, "type": "invalid_rate_card"}
                for where, message in self.items
            ],
        )


def _versions(document: Mapping[str, Any], problems: _Problems) -> list[RateCardVersion]:
    for key in document:
        if key != "versions":
            problems.add(key, "unknown top-level key; a rate card holds only [[versions]] tables")
    raw_versions = document.get("versions")
    if not isinstance(raw_versions, list) or not raw_versions:
        problems.add("versions", "add at least one [[versions]] table")
        return []
    merged: dict[str, dict[str, Any]] = {}
    starts: dict[datetime, str] = {}
    built: list[RateCardVersion] = []
    for index, raw in enumerate(raw_versions):
        name = raw.get("version") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not _VERSION_RE.fullmatch(name):
            problems.add(f"versions[{index}].version", 'give each version a name such as "2026-01"')
            continue
        where = f"version {name!r}"
        if name in merged:
            problems.add(where, "this version name is used twice; names must be unique")
            continue
        for extra in sorted(set(raw) - _VERSION_KEYS):
            problems.add(f"{where}: {extra}", _unknown_key(_VERSION_KEYS))
        body = {k: v for k, v in raw.items() if k in {"off_peak", "cache_hit", "operations"}}
        base_name = raw.get("extends")
        if base_name is not None:
            if not isinstance(base_name, str) or base_name not in merged:
                problems.add(f"{where}: extends", "name a version defined earlier in this file")
                continue
            body = _deep_merge(merged[base_name], body)
        merged[name] = body
        effective_at = _effective_at(raw.get("effective_at"), f"{where}: effective_at", problems)
        if effective_at is not None:
            if effective_at in starts:
                problems.add(
                    f"{where}: effective_at", f"version {starts[effective_at]!r} starts then too"
                )
            starts[effective_at] = name
        version = _version(name, effective_at, raw.get("description", ""), body, where, problems)
        if version is not None:
            built.append(version)
    return built


def _version(
    name: str,
    effective_at: datetime | None,
    description: object,
    body: Mapping[str, Any],
    where: str,
    problems: _Problems,
) -> RateCardVersion | None:
    before = len(problems.items)
    if not isinstance(description, str):
        problems.add(f"{where}: description", "write the description as a string")
    off_peak = _off_peak(body.get("off_peak"), f"{where}: off_peak", problems)
    cache_hit = _cache_hit(body.get("cache_hit"), f"{where}: cache_hit", problems)
    raw_ops = body.get("operations")
    operations: dict[str, OperationRates] = {}
    if not isinstance(raw_ops, dict) or not raw_ops:
        problems.add(f"{where}: operations", "add at least one [versions.operations.NAME] table")
    else:
        for op_name, raw_op in raw_ops.items():
            op = _operation(
                op_name, raw_op, off_peak, cache_hit, f"{where}: operations.{op_name}", problems
            )
            if op is not None:
                operations[op_name] = op
    if len(problems.items) > before or effective_at is None:
        return None
    return RateCardVersion(name, effective_at, str(description), operations, off_peak, cache_hit)


def _operation(
    name: str,
    raw: object,
    off_peak: OffPeak | None,
    cache_hit: Rate | None,
    where: str,
    problems: _Problems,
) -> OperationRates | None:
    if not _NAME_RE.fullmatch(name):
        problems.add(where, "operation names are lower-case letters, digits, '_', '-', '.', ':'")
    if not isinstance(raw, dict):
        problems.add(where, "write the operation as a table")
        return None
    before = len(problems.items)
    for extra in sorted(set(raw) - _OPERATION_KEYS):
        problems.add(f"{where}.{extra}", _unknown_key(_OPERATION_KEYS))
    base = _decimal(raw.get("base", 0), f"{where}.base", problems, MAX_CHARGE, MAX_RATE_DECIMALS)
    minimum = _decimal(
        raw.get("minimum", 0), f"{where}.minimum", problems, MAX_CHARGE, MAX_RATE_DECIMALS
    )
    rates, gpu_rates = _rates(raw.get("rates", {}), f"{where}.rates", problems)
    classes = _table(raw.get("instance_classes", {}), f"{where}.instance_classes", problems)
    instance_classes = {}
    for cls, value in classes.items():
        at = f"{where}.instance_classes.{cls}"
        _check_name(cls, at, problems)
        multiplier = _decimal(value, at, problems, MAX_MULTIPLIER, MAX_MULTIPLIER_DECIMALS)
        if multiplier is not None and multiplier == 0:
            problems.add(at, "an instance-class multiplier must be more than 0")
        elif multiplier is not None:
            instance_classes[cls] = Rate.of(multiplier, f"instance_class:{cls}")
    default_accelerator = _default(raw, "default_accelerator", gpu_rates, where, problems)
    default_class = _default(raw, "default_instance_class", instance_classes, where, problems)
    use_off_peak = raw.get("off_peak", True)
    if not isinstance(use_off_peak, bool):
        problems.add(
            f"{where}.off_peak", "write true (the version's off-peak windows apply) or false"
        )
    if "cache_hit_multiplier" in raw:
        at = f"{where}.cache_hit_multiplier"
        value = _decimal(
            raw["cache_hit_multiplier"], at, problems, Decimal(1), MAX_MULTIPLIER_DECIMALS
        )
        cache_hit = Rate.of(value, "cache_hit") if value is not None else None
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.add(f"{where}.description", "write the description as a string")
    if len(problems.items) > before or base is None or minimum is None:
        return None
    return OperationRates(
        name=name,
        description=str(description),
        base=Rate.of(base, "base"),
        minimum=Rate.of(minimum, "minimum_charge"),
        rates=rates,
        gpu_rates=gpu_rates,
        default_accelerator=default_accelerator,
        instance_classes=instance_classes,
        default_instance_class=default_class,
        off_peak=off_peak if use_off_peak is True else None,
        cache_hit=cache_hit,
    )


def _rates(raw: object, where: str, problems: _Problems) -> tuple[dict[str, Rate], dict[str, Rate]]:
    rates: dict[str, Rate] = {}
    gpu_rates: dict[str, Rate] = {}
    for dim, value in _table(raw, where, problems).items():
        at = f"{where}.{dim}"
        if not _DIMENSION_RE.fullmatch(dim) or dim in SELECTORS:
            problems.add(
                at, "a dimension name is lower-case letters, digits and '_', and not a selector"
            )
        elif dim == GPU_SECONDS:
            classes = _table(value, at, problems)
            if not classes:
                problems.add(at, 'price at least one accelerator class, e.g. a100 = "0.0012"')
            for cls, class_rate in classes.items():
                _check_name(cls, f"{at}.{cls}", problems)
                parsed = _rate(class_rate, f"{at}.{cls}", problems)
                if parsed is not None:
                    gpu_rates[cls] = Rate.of(parsed, f"{GPU_SECONDS}:{cls}")
        else:
            parsed = _rate(value, at, problems)
            if parsed is not None:
                rates[dim] = Rate.of(parsed, dim)
    return rates, gpu_rates


def _rate(value: object, where: str, problems: _Problems) -> Decimal | None:
    """A rate per unit: ``"0.000002"``, or ``{ credits = "0.002", per = 1000 }`` meaning the same."""
    if not isinstance(value, dict):
        return _decimal(value, where, problems, MAX_RATE, MAX_RATE_DECIMALS)
    if set(value) != {"credits", "per"}:
        problems.add(where, 'write a rate as "0.000002" or as { credits = "0.002", per = 1000 }')
        return None
    credits = _decimal(
        value["credits"], f"{where}.credits", problems, MAX_CHARGE, MAX_RATE_DECIMALS
    )
    per = value["per"]
    if not isinstance(per, int) or isinstance(per, bool) or not 1 <= per <= 10**12:
        problems.add(f"{where}.per", "per is a whole number of units from 1 to 10^12, e.g. 1000")
        return None
    if credits is None:
        return None
    try:
        rate = EXACT.divide(credits, Decimal(per))
    except ArithmeticError:
        problems.add(
            where, f"{credits} / {per} is not an exact decimal; use a power of ten for per"
        )
        return None
    return _decimal(decimal_text(rate), where, problems, MAX_RATE, MAX_RATE_DECIMALS)


def _decimal(
    value: object, where: str, problems: _Problems, maximum: Decimal, decimals: int
) -> Decimal | None:
    if value is None:
        problems.add(where, 'required: write a quoted decimal string such as "0.8"')
        return None
    if isinstance(value, float):
        problems.add(
            where, f'write it as a quoted decimal string, e.g. "{value}" (floats are inexact)'
        )
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _DECIMAL_RE.fullmatch(value):
        problems.add(
            where, f'{value!r} is not a decimal; write a quoted decimal string such as "0.5"'
        )
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:  # pragma: no cover - the regex admits only decimals
        problems.add(where, f"{value!r} is not a decimal")
        return None
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > decimals:
        problems.add(where, f"{value!r} has more than {decimals} decimal places")
        return None
    if number > maximum:
        problems.add(where, f"{value!r} is larger than the most allowed here ({maximum})")
        return None
    return number


def _off_peak(raw: object, where: str, problems: _Problems) -> OffPeak | None:
    if raw is None:
        return None
    table = _table(raw, where, problems)
    for extra in sorted(set(table) - _OFF_PEAK_KEYS):
        problems.add(f"{where}.{extra}", _unknown_key(_OFF_PEAK_KEYS))
    zone_name = table.get("time_zone", "UTC")
    zone: Any = UTC
    if not isinstance(zone_name, str):
        problems.add(f"{where}.time_zone", 'write an IANA time zone name such as "Europe/Berlin"')
        return None
    if zone_name != "UTC":
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            problems.add(
                f"{where}.time_zone",
                f'unknown time zone {zone_name!r}; use an IANA name such as "Europe/Berlin"',
            )
            return None
    windows = _windows(table.get("windows"), f"{where}.windows", problems)
    multiplier = _decimal(
        table.get("multiplier"),
        f"{where}.multiplier",
        problems,
        Decimal(1),
        MAX_MULTIPLIER_DECIMALS,
    )
    if windows is None or multiplier is None:
        return None
    return OffPeak(zone_name, zone, windows, Rate.of(multiplier, "off_peak"))


def _windows(raw: object, where: str, problems: _Problems) -> tuple[tuple[int, int], ...] | None:
    hint = "write windows as [[start_hour, end_hour], ...], e.g. [[22, 6]] for 22:00-06:00"
    if not isinstance(raw, list) or not raw:
        problems.add(where, hint)
        return None
    windows: list[tuple[int, int]] = []
    for window in raw:
        ok = isinstance(window, list) and len(window) == 2
        ok = ok and all(isinstance(h, int) and not isinstance(h, bool) for h in window)
        if (
            not ok
            or not (0 <= window[0] <= 23 and 0 <= window[1] <= 24)
            or window[0] == window[1] % 24
        ):
            problems.add(where, f"{window!r}: {hint}; start 0-23, end 0-24, start != end")
            return None
        windows.append((window[0], window[1]))
    return tuple(windows)


def _cache_hit(raw: object, where: str, problems: _Problems) -> Rate | None:
    if raw is None:
        return None
    table = _table(raw, where, problems)
    for extra in sorted(set(table) - {"multiplier"}):
        problems.add(f"{where}.{extra}", _unknown_key({"multiplier"}))
    value = _decimal(
        table.get("multiplier"),
        f"{where}.multiplier",
        problems,
        Decimal(1),
        MAX_MULTIPLIER_DECIMALS,
    )
    return Rate.of(value, "cache_hit") if value is not None else None


def _default(
    raw: Mapping[str, Any], key: str, table: Mapping[str, Rate], where: str, problems: _Problems
) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value not in table:
        problems.add(
            f"{where}.{key}",
            f"name one of the configured classes: {', '.join(sorted(table)) or 'none'}",
        )
        return None
    return value


def _effective_at(value: object, where: str, problems: _Problems) -> datetime | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.fromisoformat(value)
    if not isinstance(value, datetime) or value.tzinfo is None:
        problems.add(where, "write an RFC 3339 instant with a time zone, e.g. 2026-01-01T00:00:00Z")
        return None
    return value.astimezone(UTC)


def _table(raw: object, where: str, problems: _Problems) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    problems.add(where, "write this as a table")
    return {}


def _check_name(name: str, where: str, problems: _Problems) -> None:
    if not _NAME_RE.fullmatch(name):
        problems.add(where, "class names are lower-case letters, digits, '_', '-', '.', ':'")


def _unknown_key(accepted: set[str]) -> str:
    return f"unknown key; the accepted keys are: {', '.join(sorted(accepted))}"


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_FILE: ConfigFile[RateCard] = ConfigFile(
    package="creditmeter.pricing",
    default_name=DEFAULT_RATE_CARD,
    env_var=RATE_CARD_ENV,
    what="rate card",
    parse=parse_rate_card,
    error=RateCardError,
)
