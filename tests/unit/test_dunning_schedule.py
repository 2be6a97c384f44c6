"""The dunning schedule: retries 1, 3 and 5 days after the first failure; an attempt made since a
retry came due takes its place; a failure at or after the last retry's time is the last one."""

from __future__ import annotations

from datetime import timedelta

from creditmeter.billing.dunning import History, charge_key, exhausted, is_due, next_attempt_at
from tests.conftest import utc

FIRST = utc(2026, 2, 1, 0, 0, 30)
DAY = timedelta(days=1)


def test_a_never_charged_invoice_is_due_at_once() -> None:
    assert is_due(History(), FIRST)
    assert next_attempt_at(History()) is None


def test_retries_come_1_3_and_5_days_after_the_first_failure() -> None:
    after = [FIRST, FIRST + DAY, FIRST + 3 * DAY]
    expected = [FIRST + DAY, FIRST + 3 * DAY, FIRST + 5 * DAY]
    for n, (last, at) in enumerate(zip(after, expected, strict=True), start=1):
        past = History(n, FIRST, last)
        assert next_attempt_at(past) == at
        assert not is_due(past, at - timedelta(microseconds=1))
        assert is_due(past, at)
        assert not exhausted(past)
    assert next_attempt_at(History(4, FIRST, FIRST + 5 * DAY)) is None
    assert exhausted(History(4, FIRST, FIRST + 5 * DAY))


def test_an_attempt_by_hand_between_retries_does_not_move_the_schedule() -> None:
    assert next_attempt_at(History(2, FIRST, FIRST + DAY / 2)) == FIRST + DAY
    assert next_attempt_at(History(3, FIRST, FIRST + 2 * DAY)) == FIRST + 3 * DAY


def test_a_late_attempt_after_the_last_retry_time_is_the_last() -> None:
    late = History(2, FIRST, FIRST + 19 * DAY)
    assert exhausted(late)
    assert not is_due(late, FIRST + 30 * DAY)


def test_each_attempt_has_its_own_key() -> None:
    assert charge_key("inv_1", 1) != charge_key("inv_1", 2) == "invoice:inv_1:2"
