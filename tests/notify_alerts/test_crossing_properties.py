"""Property: whatever the sequence of writes (usage, grants, holds) and the levels set, the events
told are exactly those of a plain model of the rules: a level fires when available credits go below
its line while armed, and re-arms when they come back to its line plus hysteresis; the paused line
at zero likewise. Nothing is told twice, nothing is missed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.notify import alert_rules, alerts
from creditmeter.notify.models import NotificationEvent
from tests.notify_alerts.test_balance_alerts import T0, run_alert_jobs

CREDIT = 1_000_000
writes = st.lists(
    st.tuples(st.sampled_from(["spend", "grant"]), st.integers(min_value=1, max_value=400)),
    min_size=1,
    max_size=25,
)
levels = st.lists(
    st.tuples(st.integers(min_value=1, max_value=600), st.sampled_from([0, 500, 1000, 5000])),
    min_size=1,
    max_size=4,
    unique_by=lambda level: level[0],
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(start=st.integers(min_value=0, max_value=800), plan=writes, rules=levels)
def test_told_crossings_equal_the_model(
    db: Database,
    make_org: Callable[..., str],
    start: int,
    plan: list[tuple[str, int]],
    rules: list[tuple[int, int]],
) -> None:
    with clock.frozen_at(T0):
        org = make_org()
        with db.write() as s:
            if start:
                ledger.grant(
                    s,
                    org,
                    "live",
                    ledger.GrantRequest(start * CREDIT, LotSource.PROMO, "start", T0, None),
                    T0,
                )
            ids = []
            for threshold, hysteresis_bp in rules:
                rule = alert_rules.create(
                    s,
                    org,
                    "live",
                    alert_rules.RuleInput(
                        "credits_below",
                        str(threshold),
                        hysteresis_percent=alert_rules.show_hundredths(hysteresis_bp),
                    ),
                    T0,
                )
                ids.append(rule.id)
            alerts.refresh(s, org, "live", T0)
        # The model: each level (and the paused line) starts armed and is evaluated now.
        available = start * CREDIT
        fired = dict.fromkeys(ids, False)
        lines = {
            i: (t * CREDIT, t * CREDIT + t * CREDIT * h // 10_000)
            for i, (t, h) in zip(ids, rules, strict=True)
        }
        paused = True  # a new organization starts paused
        expected: list[tuple[datetime, str, str | None]] = []

        def evaluate(at: datetime) -> None:
            nonlocal paused
            if paused and available > 0:
                paused = False
                expected.append((at, "organization.resumed", None))
            elif not paused and available <= 0:
                paused = True
                expected.extend([(at, "balance.depleted", None), (at, "organization.paused", None)])
            for i, (below, rearm) in lines.items():
                if not fired[i] and available < below:
                    fired[i] = True
                    expected.append((at, "alert.triggered", i))
                elif fired[i] and available >= rearm:
                    fired[i] = False
                    expected.append((at, "alert.resolved", i))

        evaluate(T0)
        for n, (kind, credits) in enumerate(plan):
            at = T0 + timedelta(seconds=n + 1)
            with clock.frozen_at(at), db.write() as s:
                if kind == "spend":
                    ledger.debit(s, org, "live", credits * CREDIT, "inference", "use", at)
                    available -= credits * CREDIT
                else:
                    request = ledger.GrantRequest(
                        credits * CREDIT, LotSource.PROMO, "top up", at, None
                    )
                    ledger.grant(s, org, "live", request, at)
                    available += credits * CREDIT
            evaluate(at)
        with clock.frozen_at(T0 + timedelta(minutes=5)):
            run_alert_jobs(db)
        with db.read() as s:
            told = [
                (e.occurred_at, e.type, (e.data.get("alert") or {}).get("id"))
                for e in s.scalars(
                    select(NotificationEvent)
                    .where(NotificationEvent.organization_id == org)
                    .order_by(NotificationEvent.occurred_at, NotificationEvent.id)
                )
            ]
        # Each event carries the time of the write that crossed; within one write the order of
        # the lines is not specified: the same events, write by write.
        assert sorted(told, key=str) == sorted(expected, key=str)
