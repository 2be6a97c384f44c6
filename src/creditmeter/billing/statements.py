"""The usage statement of a closed month: what an organization used, by operation and by project.

The cycle close finalizes it once (``finalize``), from the usage events that occurred in the month and
were not reversed when the close ran; the invoice prints it. Credits are the sum of the events'
debits in micro-credits; quantities are exact ``Decimal`` sums of each numeric dimension (a
categorical dimension such as an accelerator class is not summed). A late event that arrives after the
close is in the reports and the ledger, not on the finalized statement.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal, InvalidOperation, localcontext
from typing import Any

from sqlalchemy import Text, cast, delete, func, insert, select
from sqlalchemy.orm import Session

from creditmeter.billing.domain import Period
from creditmeter.billing.models import UsageStatementLine
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs.models import Project

OPERATION = "operation"
PROJECT = "project"
#: The ``key`` of usage recorded without a project.
NO_PROJECT = ""
#: Sums of quantities are exact: a context wide enough that no sum of stored values rounds.
_EXACT = Context(prec=200)


@dataclass
class _Total:
    event_count: int = 0
    credits_micros: int = 0
    quantities: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add_many(self, count: int, credits_micros: int, numbers: dict[str, Decimal]) -> None:
        """``count`` events with these credits in all and these numbers each."""
        self.event_count += count
        self.credits_micros += credits_micros
        with localcontext(_EXACT):
            for name, number in numbers.items():
                self.quantities[name] += number * count


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
    earlier draft), with one grouped query, one delete and one insert. Returns the number of events
    each covers.

    The events are summed in SQL per organization, operation, project and *quantities document*:
    events with the same quantities are counted, not decoded one by one, and each distinct document
    is decoded once and its numbers multiplied by its count, in ``Decimal`` with enough precision
    to be exact — the same totals as adding the events one at a time."""
    orgs = sorted(set(organization_ids))
    if not orgs:
        return {}
    by_operation: dict[str, dict[str, _Total]] = {org: defaultdict(_Total) for org in orgs}
    by_project: dict[str, dict[str, _Total]] = {org: defaultdict(_Total) for org in orgs}
    events = dict.fromkeys(orgs, 0)
    shapes: dict[str, dict[str, Decimal]] = {}
    for group in _chunks(orgs):
        for org, operation, project_id, count, credits, document in session.execute(
            _grouped(group, environment, of)
        ):
            numbers = shapes.get(document)
            if numbers is None:
                numbers = shapes[document] = _numbers(document)
            events[org] += count
            by_operation[org][operation].add_many(count, int(credits), numbers)
            by_project[org][project_id or NO_PROJECT].add_many(count, int(credits), numbers)
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
        session.execute(insert(UsageStatementLine), values)
    return events


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _grouped(organization_ids: list[str], environment: str, of: Period) -> Any:
    document = cast(UsageEvent.quantities, Text)
    return (
        select(
            UsageEvent.organization_id,
            UsageEvent.operation,
            UsageEvent.project_id,
            func.count(),
            func.sum(UsageEvent.credits_micros),
            document,
        )
        .where(
            UsageEvent.organization_id.in_(organization_ids),
            UsageEvent.environment == environment,
            UsageEvent.occurred_at >= of.start,
            UsageEvent.occurred_at < of.end,
            UsageEvent.reversed_at.is_(None),
        )
        .group_by(UsageEvent.organization_id, UsageEvent.operation, UsageEvent.project_id, document)
    )


def _numbers(document: str | None) -> dict[str, Decimal]:
    """The numeric dimensions of one quantities document (as ``finalize`` always read them)."""
    quantities = json.loads(document) if document else None
    if not isinstance(quantities, dict):
        return {}
    found = {}
    for name, value in quantities.items():
        number = _number(value)
        if number is not None:
            found[name] = number
    return found


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
