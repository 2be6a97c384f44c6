"""The most usage one project may record in a calendar month.

A project's usage per calendar month (UTC) is kept as one integer (``project_usage``, for budgets). It
may total at most :data:`MAX_PROJECT_MONTH_MICROS`, the same number as the largest balance
(9,000,000,000,000 credits): a limit no real usage approaches, set so that the total stays an exact
64-bit integer on both databases (past 9.22e18 micro-credits PostgreSQL would refuse it and SQLite
would store an inexact float). An event that would take its project's month past it is refused alone
(``422 usage_limit_exceeded``) and changes nothing; the others apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from creditmeter.errors import CreditmeterError, InvalidRequest
from creditmeter.kit.credits import MAX_BALANCE_MICROS, format_credits
from creditmeter.metering.models import ProjectUsage

MAX_PROJECT_MONTH_MICROS = MAX_BALANCE_MICROS


class Usage(Protocol):
    """What the limit needs of an event being applied."""

    project_id: str | None
    occurred_at: datetime

    @property
    def credits_micros(self) -> int: ...


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


class ProjectMonths:
    """The recorded usage of every (project, month) a batch names, read once before its events are
    planned, and what each admitted event adds to it."""

    def __init__(self, session: Session, environment: str, items: Iterable[Usage]) -> None:
        self._months: dict[datetime, date] = {}  # a batch shares a few occurred_at values
        keys = {(i.project_id, self.month(i.occurred_at)) for i in items if i.project_id}
        self.used: dict[tuple[str, date], int] = {}
        self.named = bool(keys)
        if not keys:
            return
        rows = session.execute(
            select(ProjectUsage.project_id, ProjectUsage.month, ProjectUsage.credits_micros).where(
                ProjectUsage.environment == environment,
                ProjectUsage.project_id.in_({project for project, _ in keys}),
                ProjectUsage.month.in_({month for _, month in keys}),
            )
        )
        self.used = {(project, month): int(micros) for project, month, micros in rows}

    def month(self, moment: datetime) -> date:
        month = self._months.get(moment)
        if month is None:
            month = self._months[moment] = month_of(moment)
        return month

    def admit(self, items: Sequence[Usage]) -> Callable[[int], CreditmeterError | None] | None:
        """For ``plan_consumption``: refuse ``items[k]`` when it would take its project's month past
        the limit; count it otherwise (it is applied). None when the batch names no project."""
        if not self.named:
            return None

        def check(k: int) -> CreditmeterError | None:
            item = items[k]
            micros = item.credits_micros
            if item.project_id is None or not micros:
                return None
            key = (item.project_id, self.month(item.occurred_at))
            total = self.used.get(key, 0) + micros
            if total > MAX_PROJECT_MONTH_MICROS:
                return _past_limit(key[1])
            self.used[key] = total
            return None

        return check


def _past_limit(month: date) -> CreditmeterError:
    message = (
        f"this event would take its project's usage in {month:%Y-%m} past the most a project may "
        f"use in a month ({format_credits(MAX_PROJECT_MONTH_MICROS)} credits); it was not recorded"
    )
    return InvalidRequest(
        message,
        code="usage_limit_exceeded",
        errors=[{"field": "project", "message": message, "type": "usage_limit_exceeded"}],
    )
