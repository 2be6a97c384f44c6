"""The usage statement of a closed month, summed in SQL (``statements.finalize_many``), equals the
events added up one at a time in ``Decimal``, on SQLite and PostgreSQL, whatever the quantities hold:
plain decimals, exponents, spaces, underscores, JSON numbers, booleans, categories; reversed events
and events outside the month are left out; a chunk of organizations equals each one on its own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from creditmeter.billing import domain, statements
from creditmeter.billing.models import UsageStatementLine
from creditmeter.billing.plans import load_catalog
from creditmeter.kit.db import Database
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs
from tests.conftest import utc

CATALOG = load_catalog()
JANUARY = domain.period_of(utc(2026, 1, 1), CATALOG.zone)
NAMES = ("input_tokens", "output_tokens", "gpu_seconds", "accelerator")

plain = st.one_of(
    st.integers(min_value=-(10**17), max_value=10**17).map(str),
    st.decimals(
        min_value=Decimal("-1e12"), max_value=Decimal("1e12"), places=6, allow_nan=False
    ).map(str),
    st.sampled_from(["0", "-0", "007", "5.", ".5", "-.5", "0.000001", "999999999999999999"]),
)
ODD_TEXT = [
    *(" 12", "1e3", "1E-2", "1_000", "+3", "-", ".", "", "abc", "a100", "NaN", "Infinity"),
    *("1234567890123456789", "12345678901234567.89", "--1", "1.2.3", "1-2", "1.5e3", "2E-2"),
    *("a100", "h100", "3x", "12%", "1/2", "\u0661\u0662", " 7 ", "1_5.5"),
]
odd = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.integers(min_value=-(2**62), max_value=2**62),  # JSON integers count
    st.floats(allow_nan=False, allow_infinity=False),  # JSON floats do not
    st.booleans(),
    st.none(),
)
quantities = st.dictionaries(st.sampled_from(NAMES), st.one_of(plain, plain, odd), max_size=4)
event = st.tuples(
    st.integers(min_value=0, max_value=2),  # organization
    st.sampled_from(["inference", "training"]),
    st.booleans(),  # with a project
    quantities,
    st.integers(min_value=0, max_value=10**9),  # credits
    st.sampled_from(["in", "in", "in", "reversed", "before", "after"]),
)


def _number(value: Any) -> Decimal | None:
    """What a quantity adds, as the statement always read it (one event at a time)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def expected(
    events: list[tuple[str, str, str | None, dict[str, Any], int]], names: dict[str, str]
) -> list[tuple[Any, ...]]:
    totals: dict[tuple[str, str, str], list[Any]] = {}
    for org, operation, project, quantities, credits in events:
        for dimension, key in (("operation", operation), ("project", project or "")):
            total = totals.setdefault((org, dimension, key), [0, 0, defaultdict(Decimal)])
            total[0] += 1
            total[1] += credits
            for name, value in quantities.items():
                number = _number(value)
                if number is not None:
                    total[2][name] += number
    rows = []
    for (org, dimension, key), (count, credits, sums) in sorted(totals.items()):
        label = key if dimension == "operation" else (names[key] if key else "(no project)")
        text = {n: statements._text(v) for n, v in sorted(sums.items())}
        rows.append((org, dimension, key, label, count, credits, text))
    return rows


def written(db: Database, org_ids: list[str]) -> list[tuple[Any, ...]]:
    with db.read() as session:
        rows = session.execute(
            select(
                UsageStatementLine.organization_id,
                UsageStatementLine.dimension,
                UsageStatementLine.key,
                UsageStatementLine.label,
                UsageStatementLine.event_count,
                UsageStatementLine.credits_micros,
                UsageStatementLine.quantities,
            )
            .where(UsageStatementLine.organization_id.in_(org_ids))
            .order_by(
                UsageStatementLine.organization_id,
                UsageStatementLine.dimension,
                UsageStatementLine.key,
            )
        ).all()
    return [tuple(r) for r in rows]


def _at(where: str, i: int) -> tuple[datetime, datetime | None]:
    if where == "before":
        return JANUARY.start - timedelta(microseconds=1), None
    if where == "after":
        return JANUARY.end, None
    at = JANUARY.start + timedelta(hours=i)
    return at, (at if where == "reversed" else None)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(event, max_size=30))
def test_the_statement_summed_in_sql_equals_adding_the_events_one_by_one(
    db: Database, make_org: Callable[..., str], events: list[Any]
) -> None:
    org_ids = [make_org(f"Org {i}") for i in range(3)]
    with db.write() as session:
        projects = {
            org: orgs.create_project(session, org, f"Project of {org[-4:]}", utc(2026, 1, 1)).id
            for org in org_ids
        }
    names = {projects[org]: f"Project of {org[-4:]}" for org in org_ids}
    rows, counted = [], []
    for i, (n, operation, with_project, quantities_, credits, where) in enumerate(events):
        org = org_ids[n]
        project = projects[org] if with_project else None
        occurred_at, reversed_at = _at(where, i)
        rows.append(
            {
                "organization_id": org,
                "environment": "live",
                "event_id": f"ev{i}",
                "project_id": project,
                "operation": operation,
                "quantities": quantities_,
                "cache_hit": False,
                "occurred_at": occurred_at,
                "received_at": occurred_at,
                "credits_micros": credits,
                "breakdown": [],
                "rate_card_version": "test",
                "request_hash": "0" * 64,
                "allocation": {},
                "reversed_at": reversed_at,
            }
        )
        if where == "in":
            counted.append((org, operation, project, quantities_, credits))
    with db.write() as session:
        if rows:
            session.execute(insert(UsageEvent), rows)
        # two organizations in one chunk, the third on its own: the same statements
        covered = statements.finalize_many(session, org_ids[:2], "live", JANUARY)
        covered[org_ids[2]] = statements.finalize(session, org_ids[2], "live", JANUARY)
    assert written(db, org_ids) == expected(counted, names)
    assert covered == {org: sum(1 for e in counted if e[0] == org) for org in org_ids}
