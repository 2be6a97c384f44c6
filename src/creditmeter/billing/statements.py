"""The usage statement of a closed month: what an organization used, by operation and by project.

The cycle close finalizes it once (``finalize``), from the usage events that occurred in the month and
were not reversed when the close ran; the invoice prints it. Credits are the sum of the events'
debits in micro-credits; quantities are exact ``Decimal`` sums of each numeric dimension (a
categorical dimension such as an accelerator class is not summed). A late event that arrives after the
close is in the reports and the ledger, not on the finalized statement.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, InvalidOperation
from typing import Any, cast

from sqlalchemy import Table, TextClause, bindparam, delete, insert, select, text
from sqlalchemy.orm import Session

from creditmeter.billing.domain import Period
from creditmeter.billing.models import UsageStatementLine
from creditmeter.kit.db import UTCDateTime
from creditmeter.orgs.models import Project

OPERATION = "operation"
PROJECT = "project"
#: The ``key`` of usage recorded without a project.
NO_PROJECT = ""
_LINES = cast(Table, UsageStatementLine.__table__)
#: Sums of quantities are exact: a context wide enough that no sum of stored values rounds.
_EXACT = Context(prec=200)


@dataclass
class _Total:
    event_count: int = 0
    credits_micros: int = 0
    quantities: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add(self, count: int, credits_micros: int) -> None:
        self.event_count += count
        self.credits_micros += credits_micros

    def add_quantity(self, name: str, number: Decimal) -> None:
        self.quantities[name] = _EXACT.add(self.quantities[name], number)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _text(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def finalize(session: Session, organization_id: str, environment: str, of: Period) -> int:
    """Write the statement of ``of`` (replacing any earlier draft of it). Returns the number of
    events it covers."""
    return finalize_many(session, [organization_id], environment, of).get(organization_id, 0)


def finalize_many(
    session: Session, organization_ids: Sequence[str], environment: str, of: Period
) -> dict[str, int]:
    """Write the statements of ``of`` for several organizations of one environment (replacing any
    earlier draft), with two grouped queries, one delete and one insert. Returns the number of
    events each covers.

    Credits and events are summed in SQL per organization, operation and project. Quantities are
    summed in SQL too, exactly: a value written as a plain decimal (``-?digits[.digits]``, at most
    18 digits: what metering stores) is summed as an integer scaled by its number of decimals, per
    scale, in two integer parts (so no sum overflows), and made a ``Decimal`` once per group; any
    other value (an exponent, spaces, a JSON number…) is grouped by its text, counted, and read as
    before (``_number``), once per distinct value. The totals equal adding the events one at a
    time in ``Decimal``."""
    orgs = sorted(set(organization_ids))
    if not orgs:
        return {}
    by_operation: dict[str, dict[str, _Total]] = {org: defaultdict(_Total) for org in orgs}
    by_project: dict[str, dict[str, _Total]] = {org: defaultdict(_Total) for org in orgs}
    events = dict.fromkeys(orgs, 0)
    dialect = session.get_bind().dialect.name
    for group in _chunks(orgs):
        params = {"orgs": group, "env": environment, "start": of.start, "end": of.end}
        for org, operation, project_id, count, credits in session.execute(_TOTALS, params):
            events[org] += count
            by_operation[org][operation].add(count, int(credits))
            by_project[org][project_id or NO_PROJECT].add(count, int(credits))
        for org, operation, project_id, name, number in _quantity_sums(session, dialect, params):
            by_operation[org][operation].add_quantity(name, number)
            by_project[org][project_id or NO_PROJECT].add_quantity(name, number)
    names = _project_names(session, sorted({p for org in orgs for p in by_project[org] if p}))
    for group in _chunks(orgs):
        session.execute(
            delete(UsageStatementLine).where(
                UsageStatementLine.organization_id.in_(group),
                UsageStatementLine.environment == environment,
                UsageStatementLine.period_start == of.start,
            )
        )
    values = []
    for org in orgs:
        values += [
            _row(org, environment, of, OPERATION, key, key, total)
            for key, total in sorted(by_operation[org].items())
        ]
        values += [
            _row(
                org,
                environment,
                of,
                PROJECT,
                key,
                names.get(key, key) if key else "(no project)",
                total,
            )
            for key, total in sorted(by_project[org].items())
        ]
    if values:
        session.connection().execute(insert(_LINES), values)
    return events


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


_FILTER = """e.organization_id IN :orgs AND e.environment = :env AND e.occurred_at >= :start
  AND e.occurred_at < :end AND e.reversed_at IS NULL"""


def _statement(sql: str) -> TextClause:
    return text(sql).bindparams(
        bindparam("orgs", expanding=True),
        bindparam("start", type_=UTCDateTime()),
        bindparam("end", type_=UTCDateTime()),
    )


_TOTALS = _statement(
    "SELECT e.organization_id, e.operation, e.project_id, count(*), sum(e.credits_micros) "
    + f"FROM usage_events AS e WHERE {_FILTER} GROUP BY e.organization_id, e.operation, e.project_id"
)
#: Each quantity of each event as a row (``kind``: ``text`` for a JSON string, ``integer`` for a
#: JSON integer, what ``json.loads`` makes an ``int``; other values are left out; ``v``: its text).
_QUANTITY_ROWS = {
    "sqlite": "SELECT e.organization_id AS o, e.operation AS op, e.project_id AS p, "  # noqa: S608 - constants only; every value is a bound parameter
    "q.key AS name, q.type AS kind, q.value AS v "
    "FROM usage_events AS e, json_each(e.quantities) AS q "
    f"WHERE {_FILTER} AND json_type(e.quantities) = 'object' AND q.type IN ('text', 'integer')",
    "postgresql": "SELECT e.organization_id AS o, e.operation AS op, e.project_id AS p, "  # noqa: S608 - constants only; every value is a bound parameter
    "q.key AS name, CASE json_typeof(q.value) WHEN 'string' THEN 'text' ELSE 'integer' END AS kind, "
    "q.value #>> '{}' AS v FROM usage_events AS e, "
    "json_each(CASE WHEN json_typeof(e.quantities) = 'object' THEN e.quantities END) AS q "
    f"WHERE {_FILTER} AND (json_typeof(q.value) = 'string' "
    "OR (json_typeof(q.value) = 'number' AND q.value::text ~ '^-?[0-9]+$'))",
}
_SPLIT = 1_000_000_000
_DIGITS = "CAST(replace(v, '.', '') AS BIGINT)"
_SUMS = f"sum({_DIGITS} / {_SPLIT}), sum({_DIGITS} % {_SPLIT}), count(*)"
#: SQLite: the values grouped by their scale and their *shape* (``sig``: what is left once a
#: leading ``-`` and the digits at both ends are trimmed), with what decides, per group, whether
#: every value in it is a plain decimal (``-?digits[.digits]``, at least one digit, at most 18
#: characters): ``sig`` is ``''`` or ``'.'``, no value starts with ``--``, every value has a
#: digit, and the longest value. A group that passes is summed exactly as scaled
#: integers; a group that does not sends its organizations to ``_BY_VALUE``. (A few string
#: functions per value instead of a full pattern match: the close's statement step is mostly
#: this scan.)
_BY_SHAPE = _statement(
    "SELECT o, op, p, name, kind, trim(ltrim(v, '-'), '0123456789') AS sig, "  # noqa: S608 - constants only; every value is a bound parameter
    "CASE WHEN instr(v, '.') > 0 THEN length(v) - instr(v, '.') ELSE 0 END AS scale, "
    f"{_SUMS}, max(length(v)), max(v GLOB '--*'), min(v GLOB '*[0-9]*') FROM ({_QUANTITY_ROWS['sqlite']}) AS x "
    "GROUP BY 1, 2, 3, 4, 5, 6, 7"
)
#: Every distinct value, counted (SQLite, for organizations with a value that is not plain).
_BY_VALUE = _statement(
    "SELECT o, op, p, name, kind, v, count(*) "  # noqa: S608 - constants only; every value is a bound parameter
    f"FROM ({_QUANTITY_ROWS['sqlite']}) AS x GROUP BY 1, 2, 3, 4, 5, 6"
)
#: PostgreSQL: plain decimals (a pattern match per value) summed as scaled integers per scale,
#: every other value grouped by its text and counted.
_PLAIN = "(v ~ '^-?([0-9]+[.]?[0-9]*|[.][0-9]+)$' AND length(v) <= 18)"
_PG_QUANTITIES = _statement(
    "SELECT o, op, p, name, CASE WHEN plain THEN NULL ELSE kind END, "  # noqa: S608 - constants only; every value is a bound parameter
    "CASE WHEN plain THEN (CASE WHEN strpos(v, '.') > 0 THEN length(v) - strpos(v, '.') ELSE 0 END) "
    "END, CASE WHEN plain THEN NULL ELSE v END, "
    f"sum(CASE WHEN plain THEN {_DIGITS} / {_SPLIT} END), "
    f"sum(CASE WHEN plain THEN {_DIGITS} % {_SPLIT} END), count(*) "
    f"FROM (SELECT x.*, {_PLAIN} AS plain FROM ({_QUANTITY_ROWS['postgresql']}) AS x OFFSET 0) "
    "AS y GROUP BY 1, 2, 3, 4, 5, 6, 7"
)

Quantity = tuple[str, str, str | None, str, Decimal]


def _quantity_sums(session: Session, dialect: str, params: dict[str, Any]) -> Iterator[Quantity]:
    """(organization, operation, project, name, exact total) of each numeric quantity."""
    if dialect == "postgresql":
        for org, op, project_id, name, kind, scale, value, high, low, count in session.execute(
            _PG_QUANTITIES, params
        ):
            if scale is not None:
                yield org, op, project_id, name, _scaled(high, low, scale)
            else:
                yield from _counted(org, op, project_id, name, kind, value, count)
        return
    found: list[Quantity] = []
    odd: set[str] = set()
    for row in session.execute(_BY_SHAPE, params):
        org, op, project_id, name, _, sig, scale, high, low, _, longest, minus, digit = row
        if sig not in ("", ".") or longest > 18 or minus or not digit:
            if _maybe_number(sig):
                odd.add(org)
        elif org not in odd:
            found.append((org, op, project_id, name, _scaled(high, low, scale)))
    yield from (q for q in found if q[0] not in odd)
    if odd:
        for org, op, project_id, name, kind, value, count in session.execute(
            _BY_VALUE, {**params, "orgs": sorted(odd)}
        ):
            yield from _counted(org, op, project_id, name, kind, value, count)


#: What may stand between the digits of a finite number ``Decimal`` reads: sign, point, exponent,
#: digit grouping, white space. Any other ASCII character (the letters of a category such as
#: ``a100``, of ``Infinity`` or ``NaN``) means the value adds nothing.
_NUMBER_CHARACTERS = frozenset("0123456789+-.eE_ \t\n\r\f\v")


def _maybe_number(sig: str) -> bool:
    """Whether values of this shape may be finite numbers (then they are read one by one)."""
    return all(c in _NUMBER_CHARACTERS or not c.isascii() for c in sig)


def _scaled(high: Any, low: Any, scale: Any) -> Decimal:
    return Decimal(int(high) * _SPLIT + int(low)).scaleb(-int(scale), _EXACT)


def _counted(
    org: str, op: str, project_id: str | None, name: str, kind: str, value: str, count: int
) -> Iterator[Quantity]:
    one = _number(int(value) if kind == "integer" else value)
    if one is not None:
        yield org, op, project_id, name, _EXACT.multiply(one, count)


def _project_names(session: Session, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(session.execute(select(Project.id, Project.name).where(Project.id.in_(ids))).all())


def _row(
    organization_id: str,
    environment: str,
    of: Period,
    dimension: str,
    key: str,
    label: str,
    total: _Total,
) -> dict[str, Any]:
    return {
        "organization_id": organization_id,
        "environment": environment,
        "period_start": of.start,
        "dimension": dimension,
        "key": key,
        "label": label[:200],
        "event_count": total.event_count,
        "credits_micros": total.credits_micros,
        "quantities": {name: _text(v) for name, v in sorted(total.quantities.items())},
    }


def lines(
    session: Session, organization_id: str, environment: str, period_start: datetime
) -> list[UsageStatementLine]:
    """The finalized statement of the period starting at ``period_start``: operations, then
    projects, each by key."""
    return list(
        session.scalars(
            select(UsageStatementLine)
            .where(
                UsageStatementLine.organization_id == organization_id,
                UsageStatementLine.environment == environment,
                UsageStatementLine.period_start == period_start,
            )
            .order_by(UsageStatementLine.dimension, UsageStatementLine.key)
        )
    )
