"""The usage statement of a closed month: what an organization used, by operation and by project.

The cycle close finalizes it once (``finalize``), from the usage events that occurred in the month and
were not reversed when the close ran; the invoice prints it. Credits are the sum of the events'
debits in micro-credits; quantities are exact ``Decimal`` sums of each numeric dimension (a
categorical dimension such as an accelerator class is not summed). A late event that arrives after the
close is in the reports and the ledger, not on the finalized statement.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from creditmeter.billing.domain import Period
from creditmeter.billing.models import UsageStatementLine
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs.models import Project

OPERATION = "operation"
PROJECT = "project"
#: The ``key`` of usage recorded without a project.
NO_PROJECT = ""


@dataclass
class _Total:
    event_count: int = 0
    credits_micros: int = 0
    quantities: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))

    def add(self, credits_micros: int, quantities: dict[str, Any]) -> None:
        self.event_count += 1
        self.credits_micros += credits_micros
        for name, value in quantities.items():
            number = _number(value)
            if number is not None:
                self.quantities[name] += number


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
    by_operation: dict[str, _Total] = defaultdict(_Total)
    by_project: dict[str, _Total] = defaultdict(_Total)
    rows = session.execute(
        select(
            UsageEvent.operation,
            UsageEvent.project_id,
            UsageEvent.credits_micros,
            UsageEvent.quantities,
        )
        .where(
            UsageEvent.organization_id == organization_id,
            UsageEvent.environment == environment,
            UsageEvent.occurred_at >= of.start,
            UsageEvent.occurred_at < of.end,
            UsageEvent.reversed_at.is_(None),
        )
        .execution_options(yield_per=5000)
    )
    events = 0
    for operation, project_id, credits_micros, quantities in rows:
        by_operation[operation].add(credits_micros, quantities or {})
        by_project[project_id or NO_PROJECT].add(credits_micros, quantities or {})
        events += 1
    names = _project_names(session, [p for p in by_project if p])
    session.execute(
        delete(UsageStatementLine).where(
            UsageStatementLine.organization_id == organization_id,
            UsageStatementLine.environment == environment,
            UsageStatementLine.period_start == of.start,
        )
    )
    values = [
        _row(organization_id, environment, of, OPERATION, key, key, total)
        for key, total in sorted(by_operation.items())
    ] + [
        _row(
            organization_id,
            environment,
            of,
            PROJECT,
            key,
            names.get(key, key) if key else "(no project)",
            total,
        )
        for key, total in sorted(by_project.items())
    ]
    if values:
        session.execute(insert(UsageStatementLine), values)
    return events


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
