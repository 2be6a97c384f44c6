"""POST /v1/usage: one usage event, priced, debited in the same transaction that records it, applied at
most once (DESIGN.md §2 "Usage event", "Overdraft"; §5 invariants 4 and 6); and its correction,
POST /v1/organizations/{org}/usage/{id}/reverse (operator only, once, exactly)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.ledger.models import JournalTransaction, Posting
from creditmeter.metering.models import UsageEvent
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Role
from creditmeter.worker.runner import tick
from tests.conftest import utc
from tests.metering import (
    H100_HOUR,
    H100_HOUR_PRICE,
    T0,
    TOKENS,
    TOKENS_PRICE,
    Headers,
    assert_breakdown_sums,
    assert_clean,
    assert_problem,
    authorize,
    balance,
    dec,
    event,
    grant,
    state_of,
    summary,
)


@pytest.fixture(autouse=True)
def _noon(db: Database) -> Iterator[None]:
    """Every test runs at noon on 10 March 2026, and the ledger proves itself afterwards."""
    with clock.frozen_at(T0):
        yield
    assert_clean(db)


@dataclass
class Org:
    id: str
    key: Headers
    project: str
    member: str


@pytest.fixture
def make_tenant(
    db: Database,
    client: TestClient,
    operator: Headers,
    make_org: Callable[..., str],
    make_key: Callable[..., Headers],
) -> Callable[..., Org]:
    """An organization with a project "Research", a member ada@acme.example, an org:ingest key and
    ``credits`` live credits."""

    def _make(name: str = "Acme AI", credits: str | None = "10") -> Org:
        org = make_org(name, f"{name.lower().replace(' ', '-')}-ext")
        with db.write() as s:
            project = orgs.create_project(s, org, "Research", clock.now()).id
            member = orgs.add_member(s, org, "Ada@Acme.example", Role.MEMBER, clock.now()).id
        if credits:
            grant(client, operator, org, credits)
        return Org(org, make_key(org, "org:ingest"), project, member)

    return _make


@pytest.fixture
def acme(make_tenant: Callable[..., Org]) -> Org:
    return make_tenant()


def post(client: TestClient, headers: Headers, body: dict[str, Any]) -> Any:
    return client.post("/v1/usage", json=body, headers=headers)


def stored_events(db: Database, org: str) -> list[UsageEvent]:
    with db.read() as s:
        rows = list(
            s.scalars(
                select(UsageEvent).where(UsageEvent.organization_id == org).order_by(UsageEvent.id)
            )
        )
        s.expunge_all()
    return rows


# --- applied -----------------------------------------------------------------------------------


def test_an_event_is_priced_debited_at_once_and_answered_with_the_balance(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    response = post(client, acme.key, event("req-1", acme.id))

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == "req-1"
    assert body["status"] == "applied"
    assert body["credits"] == TOKENS_PRICE
    assert body["rate_card_version"] == "2026-01"
    assert [(line["component"], line["quantity"], line["rate"], line["credits"]) for line in
            body["breakdown"]] == [
        ("input_tokens", "1000", "0.000002", "0.002"),
        ("output_tokens", "500", "0.000006", "0.003"),
    ]  # fmt: skip
    assert_breakdown_sums(body)
    assert body["balance"] == {"available": "9.995", "arrears": "0", "paused": False}
    # every later read reflects it at once
    assert summary(client, acme.key, acme.id) == ("9.995", "0", "0", False)
    assert authorize(client, acme.key, acme.id)["available"] == "9.995"
    # recorded and debited by one journal transaction
    [stored] = stored_events(db, acme.id)
    assert (stored.event_id, stored.credits_micros, stored.environment) == ("req-1", 5000, "live")
    with db.read() as s:
        txn = s.get(JournalTransaction, stored.transaction_id)
        assert txn is not None
        assert txn.kind == "usage"
        postings = s.execute(
            select(Posting.account, Posting.amount_micros).where(
                Posting.transaction_id == stored.transaction_id
            )
        ).all()
    assert sorted(postings) == [("consumption:inference", 5000), ("lot", -5000)]
    assert_clean(db)


@pytest.mark.parametrize(
    ("operation", "quantities", "extra", "credits", "components"),
    [
        ("inference", TOKENS, {}, "0.005", ["input_tokens", "output_tokens"]),
        ("inference", TOKENS, {"cache_hit": True}, "0.0025", ["input_tokens", "output_tokens",
                                                              "cache_hit"]),
        ("inference", {"input_tokens": "1"}, {}, "0.0001", ["input_tokens", "minimum_charge"]),
        ("training", H100_HOUR, {}, "6.76", ["base", "gpu_seconds:h100"]),
        (
            "training",
            {"gpu_seconds": "3600", "accelerator": "a100", "instance_class": "gpu-large"},
            {},
            "10.64",
            ["base", "gpu_seconds:a100", "instance_class:gpu-large"],
        ),
        (
            "training",
            H100_HOUR,
            {"occurred_at": "2026-03-10T03:00:00Z"},
            "4.732",
            ["base", "gpu_seconds:h100", "off_peak"],
        ),
        (
            "data_processing",
            {"cpu_seconds": "1000", "data_gb": "2.5", "instance_class": "highmem"},
            {},
            "0.05625",
            ["cpu_seconds", "data_gb", "instance_class:highmem"],
        ),
    ],
)  # fmt: skip
def test_the_debit_equals_the_estimate_and_its_breakdown_sums_to_it(
    client: TestClient,
    db: Database,
    acme: Org,
    operation: str,
    quantities: dict[str, str],
    extra: dict[str, Any],
    credits: str,
    components: list[str],
) -> None:
    body = event("req-1", acme.id, operation, quantities=quantities, **extra)
    estimate = client.post(
        "/v1/estimate",
        json={k: v for k, v in body.items() if k not in {"id", "organization"}},
        headers=acme.key,
    ).json()

    applied = post(client, acme.key, body).json()

    assert applied["credits"] == estimate["credits"] == credits
    assert applied["breakdown"] == estimate["breakdown"]
    assert [line["component"].split(":")[0] for line in applied["breakdown"]] == [
        c.split(":")[0] for c in components
    ]
    assert_breakdown_sums(applied)
    assert applied["balance"]["available"] == str(dec("10") - dec(credits))
    assert_clean(db)


# --- at most once ------------------------------------------------------------------------------


def test_a_repeat_with_the_same_id_and_body_returns_the_original_result_and_debits_nothing(
    client: TestClient, db: Database, acme: Org
) -> None:
    first = post(client, acme.key, event("req-1", acme.id)).json()
    post(client, acme.key, event("req-2", acme.id, "training"))

    again = post(client, acme.key, event("req-1", acme.id))

    assert again.status_code == 200, again.text
    repeat = again.json()
    assert repeat["status"] == "duplicate"
    for field in ("id", "credits", "breakdown", "rate_card_version"):
        assert repeat[field] == first[field]
    # the balance next to it is today's, and nothing was debited twice
    assert repeat["balance"] == {"available": "3.235", "arrears": "0", "paused": False}
    assert summary(client, acme.key, acme.id)[0] == "3.235"
    assert len(stored_events(db, acme.id)) == 2
    # an integer quantity and its decimal string are the same event
    same = event("req-1", acme.id, quantities={"input_tokens": 1000, "output_tokens": 500})
    assert post(client, acme.key, same).json()["status"] == "duplicate"
    assert_clean(db)


def test_a_retry_days_later_still_returns_the_original_result(
    client: TestClient, db: Database, acme: Org
) -> None:
    sent = event("req-1", acme.id, "training", occurred_at="2026-03-10T12:00:00Z")
    first = post(client, acme.key, sent).json()
    with clock.frozen_at(T0 + timedelta(days=3)):
        repeat = post(client, acme.key, sent)
    assert repeat.status_code == 200
    assert repeat.json()["credits"] == first["credits"]
    assert summary(client, acme.key, acme.id)[0] == "3.24"


@pytest.mark.parametrize(
    "change",
    [
        {"quantities": {"input_tokens": "1001", "output_tokens": "500"}},
        {"operation": "data_processing", "quantities": {"cpu_seconds": "10"}},
        {"project": "Research"},
        {"cache_hit": True},
        {"occurred_at": "2026-03-10T11:00:00Z"},
        {"metadata": {"model": "other"}},
    ],
)
def test_the_same_id_with_a_different_body_is_409_and_changes_nothing(
    client: TestClient, db: Database, acme: Org, change: dict[str, Any]
) -> None:
    post(client, acme.key, event("req-1", acme.id, metadata={"model": "small"}))
    before = state_of(db, acme.id)

    response = post(client, acme.key, {**event("req-1", acme.id, metadata={"model": "small"}),
                                       **change})  # fmt: skip

    body = assert_problem(response, 409, "event_id_conflict")
    assert "req-1" in body["detail"]
    assert state_of(db, acme.id) == before


def test_event_ids_are_unique_per_organization_not_globally(
    client: TestClient, db: Database, make_tenant: Callable[..., Org], operator: Headers
) -> None:
    acme, globex = make_tenant("Acme AI"), make_tenant("Globex")
    assert post(client, acme.key, event("req-1", acme.id)).status_code == 201
    assert post(client, globex.key, event("req-1", globex.id)).status_code == 201
    assert summary(client, operator, acme.id)[0] == summary(client, operator, globex.id)[0]
    assert summary(client, operator, acme.id)[0] == "9.995"


def test_concurrent_retries_of_one_event_apply_it_once(
    client: TestClient, db: Database, acme: Org
) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        response = post(client, acme.key, event("req-1", acme.id, "training"))
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(statuses) == [200] * 5 + [201]
    assert summary(client, acme.key, acme.id)[0] == "3.24"
    assert len(stored_events(db, acme.id)) == 1
    assert_clean(db)


# --- who did it --------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["id", "name"])
def test_a_project_is_named_by_id_or_name(
    client: TestClient, db: Database, acme: Org, by: str
) -> None:
    ref = acme.project if by == "id" else "Research"
    assert post(client, acme.key, event("req-1", acme.id, project=ref)).status_code == 201
    assert stored_events(db, acme.id)[0].project_id == acme.project


@pytest.mark.parametrize("by", ["id", "email", "email in another case"])
def test_a_member_is_named_by_id_or_email(
    client: TestClient, db: Database, acme: Org, by: str
) -> None:
    ref = {"id": acme.member, "email": "ada@acme.example"}.get(by, "ADA@acme.EXAMPLE")
    response = post(client, acme.key, event("req-1", acme.id, member=ref))
    assert response.status_code == 201, response.text
    assert stored_events(db, acme.id)[0].member_id == acme.member


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("project", "Nope", "unknown_project"),
        ("project", "research", "unknown_project"),
        ("member", "bob@acme.example", "unknown_member"),
        ("member", "mem_01HZZZZZZZZZZZZZZZZZZZZZZZ", "unknown_member"),
    ],
)
def test_an_unknown_project_or_member_is_422_and_changes_nothing(
    client: TestClient, db: Database, acme: Org, field: str, value: str, code: str
) -> None:
    before = state_of(db, acme.id)
    body = assert_problem(post(client, acme.key, event("req-1", acme.id, **{field: value})), 422,
                          code)  # fmt: skip
    assert body["errors"][0]["field"] == field
    assert state_of(db, acme.id) == before


def test_another_organizations_project_or_member_is_unknown_here(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    acme, globex = make_tenant("Acme AI"), make_tenant("Globex")
    before = state_of(db, acme.id)
    for field, value, code in [
        ("project", globex.project, "unknown_project"),
        ("member", globex.member, "unknown_member"),
    ]:
        response = post(client, acme.key, event("req-1", acme.id, **{field: value}))
        assert_problem(response, 422, code)
    assert state_of(db, acme.id) == before


# --- what is priceable ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "quantities", "code"),
    [
        ("rendering", {"input_tokens": "1"}, "unknown_operation"),
        ("inference", {"gpu_hours": "1"}, "unknown_dimension"),
        ("inference", {"data_gb": "1"}, "unknown_dimension"),
        ("inference", {"input_tokens": "-1"}, "invalid_quantity"),
        ("inference", {"input_tokens": -1}, "invalid_quantity"),
        ("inference", {"input_tokens": 1.5}, "invalid_quantity"),
        ("inference", {"input_tokens": 1.0}, "invalid_quantity"),
        ("inference", {"input_tokens": "lots"}, "invalid_quantity"),
        ("inference", {"input_tokens": "1e3"}, "invalid_quantity"),
        ("inference", {"input_tokens": "NaN"}, "invalid_quantity"),
        ("inference", {"input_tokens": "Infinity"}, "invalid_quantity"),
        ("inference", {"input_tokens": True}, "invalid_quantity"),
        ("inference", {"input_tokens": None}, "invalid_quantity"),
        ("inference", {"input_tokens": ["1"]}, "invalid_quantity"),
        ("inference", {"input_tokens": {"n": "1"}}, "invalid_quantity"),
        ("inference", {"input_tokens": "0.0000000000001"}, "invalid_quantity"),
        ("inference", {"input_tokens": "10000000000000000"}, "invalid_quantity"),
        ("training", {"gpu_seconds": "60"}, "unknown_class"),
        ("training", {"gpu_seconds": "60", "accelerator": "tpu"}, "unknown_class"),
    ],
)
def test_unpriceable_events_are_422_with_a_clear_message_and_change_nothing(
    client: TestClient,
    db: Database,
    acme: Org,
    operation: str,
    quantities: dict[str, Any],
    code: str,
) -> None:
    before = state_of(db, acme.id)
    response = post(client, acme.key, event("req-1", acme.id, operation, quantities=quantities))
    body = assert_problem(response, 422, code)
    assert body["errors"][0]["message"]
    assert state_of(db, acme.id) == before
    # the id was not used up: the corrected event applies
    assert post(client, acme.key, event("req-1", acme.id)).status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        {"organization": "x", "operation": "inference"},  # no id
        {"id": "", "organization": "x", "operation": "inference"},
        {"id": "x" * 256, "organization": "x", "operation": "inference"},
        {"id": "a\x00b", "organization": "x", "operation": "inference"},
        {"id": "e", "organization": "x", "operation": "inference", "cache_hit": "yes"},
        {"id": "e", "organization": "x", "operation": "inference", "quantities": []},
        {"id": "e", "organization": "x", "operation": "inference", "surprise": 1},
        {"id": "e", "organization": "x", "operation": "inference", "occurred_at": "yesterday"},
        {"id": "e", "organization": "x", "operation": "inference",
         "occurred_at": "2026-03-10T12:00:00"},  # no time zone
        {"id": "e", "organization": "x", "operation": "inference",
         "metadata": {"blob": "x" * 9000}},
        {"id": "e", "organization": "x", "operation": "inference",
         "quantities": {f"d{i}": "1" for i in range(51)}},
    ],
)  # fmt: skip
def test_malformed_events_are_422_problems(
    client: TestClient, db: Database, acme: Org, body: dict[str, Any]
) -> None:
    body = {**body, "organization": acme.id}
    before = state_of(db, acme.id)
    assert_problem(post(client, acme.key, body), 422)
    assert state_of(db, acme.id) == before


def test_deeply_nested_metadata_is_refused_not_a_500(
    client: TestClient, db: Database, acme: Org
) -> None:
    before = state_of(db, acme.id)
    for depth in (300, 900):
        nested = '{"a": ' * depth + "1" + "}" * depth
        raw = (
            f'{{"id": "deep-{depth}", "organization": "{acme.id}", "operation": "inference", '
            f'"metadata": {nested}}}'
        )
        response = client.post(
            "/v1/usage", content=raw, headers={**acme.key, "Content-Type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
    assert state_of(db, acme.id) == before
    modest = {"run": {"model": {"name": "llama", "tags": ["a", "b"]}}, "n": 3}
    response = post(client, acme.key, event("meta-1", acme.id, metadata=modest))
    assert response.status_code == 201
    assert stored_events(db, acme.id)[0].event_metadata == modest


# --- when it happened --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        (T0 - timedelta(days=35), 201),
        (T0 - timedelta(days=35, seconds=1), "event_too_old"),
        (T0 - timedelta(days=400), "event_too_old"),
        (T0 + timedelta(minutes=5), 201),
        (T0 + timedelta(minutes=5, seconds=1), "event_in_future"),
        (T0 + timedelta(days=1), "event_in_future"),
    ],
)
def test_events_must_fall_within_the_late_window_and_the_clock_skew(
    client: TestClient, db: Database, acme: Org, occurred_at: Any, expected: int | str
) -> None:
    before = state_of(db, acme.id)
    response = post(client, acme.key, event("req-1", acme.id, occurred_at=occurred_at.isoformat()))
    if expected == 201:
        assert response.status_code == 201, response.text
    else:
        body = assert_problem(response, 422, str(expected))
        assert body["errors"][0]["field"] == "occurred_at"
        assert state_of(db, acme.id) == before


def test_an_event_without_occurred_at_happened_now(
    client: TestClient, db: Database, acme: Org
) -> None:
    post(client, acme.key, event("req-1", acme.id))
    assert stored_events(db, acme.id)[0].occurred_at == T0


def test_an_event_is_priced_by_the_rate_card_version_in_force_when_it_happened(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    dedicated = {"gpu_seconds": "3600", "accelerator": "h100"}  # inference: no off-peak discount
    with clock.frozen_at(utc(2026, 1, 20, 12)):
        acme = make_tenant(credits="100")
        cards = {
            at: client.get("/v1/rate-card", params={"at": at}, headers=acme.key).json()
            for at in ("2025-12-31T23:59:59Z", "2026-01-01T00:00:00Z")
        }
        assert [c["version"] for c in cards.values()] == ["2024-01", "2026-01"]
        rates = [c["operations"]["inference"]["rates"]["gpu_seconds"]["h100"] for c in
                 cards.values()]  # fmt: skip
        assert rates == ["0.002", "0.0016"]
        results = [
            post(
                client,
                acme.key,
                event(f"req-{at}", acme.id, quantities=dedicated, occurred_at=at),
            ).json()
            for at in ("2025-12-31T23:59:59Z", "2026-01-01T00:00:00Z", "2026-01-20T12:00:00Z")
        ]
    assert [(r["rate_card_version"], r["credits"]) for r in results] == [
        ("2024-01", "7.2"),
        ("2026-01", "5.76"),
        ("2026-01", "5.76"),
    ]
    assert [e.rate_card_version for e in stored_events(db, acme.id)] == [
        "2024-01",
        "2026-01",
        "2026-01",
    ]
    assert_clean(db)


# --- overdraft ---------------------------------------------------------------------------------


def test_usage_beyond_the_balance_is_recorded_the_excess_goes_to_arrears_and_the_org_is_paused(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    first = post(client, acme.key, event("run-1", acme.id, "training")).json()
    assert first["balance"] == {"available": "3.24", "arrears": "0", "paused": False}

    second = post(client, acme.key, event("run-2", acme.id, "training"))

    assert second.status_code == 201, second.text
    assert second.json()["credits"] == H100_HOUR_PRICE  # the whole usage is recorded
    assert second.json()["balance"] == {"available": "-3.52", "arrears": "3.52", "paused": True}
    assert summary(client, acme.key, acme.id) == ("-3.52", "3.52", "0", True)
    refused = authorize(client, acme.key, acme.id)
    assert (refused["allowed"], refused["reason"]) == (False, "insufficient_credits")
    # usage performed while paused is still recorded
    third = post(client, acme.key, event("req-3", acme.id)).json()
    assert third["balance"] == {"available": "-3.525", "arrears": "3.525", "paused": True}

    # the next credits pay the arrears first, and the organization resumes by itself
    grant(client, operator, acme.id, "5")
    assert summary(client, acme.key, acme.id) == ("1.475", "0", "0", False)
    resumed = authorize(client, acme.key, acme.id)
    assert (resumed["allowed"], resumed["reason"]) == (True, "ok")
    assert post(client, acme.key, event("req-4", acme.id)).json()["balance"] == {
        "available": "1.47",
        "arrears": "0",
        "paused": False,
    }
    assert_clean(db)


def test_a_balance_of_exactly_zero_is_paused(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    acme = make_tenant(credits="6.76")
    body = post(client, acme.key, event("run-1", acme.id, "training")).json()
    assert body["balance"] == {"available": "0", "arrears": "0", "paused": True}
    assert authorize(client, acme.key, acme.id)["reason"] == "insufficient_credits"


def test_an_organization_without_any_credits_records_usage_in_arrears(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    acme = make_tenant(credits=None)
    body = post(client, acme.key, event("req-1", acme.id)).json()
    assert body["balance"] == {"available": "-0.005", "arrears": "0.005", "paused": True}
    assert_clean(db)


# --- test mode ---------------------------------------------------------------------------------


def test_a_test_key_records_usage_against_the_test_balance_only(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_key: Callable[..., Headers],
    acme: Org,
) -> None:
    sandbox = make_key(acme.id, "org:ingest", environment="test")
    grant(client, operator, acme.id, "2", source="promo", environment="test")
    live_before = balance(client, operator, acme.id, "live")

    response = post(client, sandbox, event("req-1", acme.id, "training"))

    assert response.status_code == 201, response.text
    assert response.json()["balance"] == {"available": "-4.76", "arrears": "4.76", "paused": True}
    assert summary(client, sandbox, acme.id) == ("-4.76", "4.76", "0", True)
    assert balance(client, operator, acme.id, "live") == live_before
    assert authorize(client, acme.key, acme.id)["allowed"] is True  # live is not paused
    assert authorize(client, sandbox, acme.id)["allowed"] is False
    # the same id in live is another event: the environments never share anything
    live = post(client, acme.key, event("req-1", acme.id, "training"))
    assert (live.status_code, live.json()["status"]) == (201, "applied")
    assert summary(client, acme.key, acme.id)[0] == "3.24"
    assert sorted(e.environment for e in stored_events(db, acme.id)) == ["live", "test"]
    assert_clean(db)


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["org:ingest", "org:admin"])
def test_an_ingest_or_admin_key_sends_its_own_organizations_events(
    client: TestClient, make_key: Callable[..., Headers], acme: Org, scope: str
) -> None:
    key = make_key(acme.id, scope)
    assert post(client, key, event("by-id", acme.id)).status_code == 201
    assert post(client, key, event("by-external-id", "acme-ai-ext")).status_code == 201
    assert summary(client, key, acme.id)[0] == "9.99"


def test_an_ingest_key_cannot_send_another_organizations_events(
    client: TestClient, db: Database, make_tenant: Callable[..., Org]
) -> None:
    acme, globex = make_tenant("Acme AI"), make_tenant("Globex")
    before = state_of(db, globex.id)
    for ref in (globex.id, "globex-ext"):
        response = post(client, acme.key, event("req-1", ref))
        body = assert_problem(response, 404, "unknown_organization")
        assert "Globex" not in body["detail"]
    nowhere = post(client, acme.key, event("req-1", "org_01HZZZZZZZZZZZZZZZZZZZZZZZ"))
    assert_problem(nowhere, 404, "unknown_organization")
    assert state_of(db, globex.id) == before


def test_a_read_only_key_cannot_ingest(
    client: TestClient, db: Database, make_key: Callable[..., Headers], acme: Org
) -> None:
    reader = make_key(acme.id, "org:read")
    before = state_of(db, acme.id)
    assert_problem(post(client, reader, event("req-1", acme.id)), 403, "insufficient_scope")
    assert state_of(db, acme.id) == before


def test_an_operator_key_sends_any_organizations_events(
    client: TestClient, operator: Headers, make_tenant: Callable[..., Org]
) -> None:
    acme, globex = make_tenant("Acme AI"), make_tenant("Globex")
    assert post(client, operator, event("req-1", acme.id)).status_code == 201
    assert post(client, operator, event("req-1", "globex-ext")).status_code == 201
    assert summary(client, operator, globex.id)[0] == "9.995"


def test_usage_needs_a_key(client: TestClient, acme: Org) -> None:
    assert_problem(client.post("/v1/usage", json=event("req-1", acme.id)), 401)


# --- corrections ------------------------------------------------------------------------------


def reverse(client: TestClient, headers: Headers, org: str, event_id: str) -> Any:
    return client.post(
        f"/v1/organizations/{org}/usage/{event_id}/reverse",
        json={"reason": "the job failed on our side"},
        headers=headers,
    )


def lots(client: TestClient, org: str, operator: Headers) -> list[tuple[str, str, str]]:
    data = client.get(f"/v1/organizations/{org}/grants", headers=operator).json()["data"]
    return [(lot["source"], lot["credits"], lot["remaining"]) for lot in data]


def test_a_reversal_re_credits_exactly_what_the_event_cost_once(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    post(client, acme.key, event("run-1", acme.id, "training"))
    post(client, acme.key, event("req-2", acme.id))

    response = reverse(client, operator, acme.id, "run-1")

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["id"], body["reversed"], body["credits"]) == ("run-1", True, "6.76")
    assert body["transaction_id"].startswith("txn_")
    assert summary(client, acme.key, acme.id) == ("9.995", "0", "0", False)
    assert lots(client, acme.id, operator) == [("plan", "10", "9.995")]  # back to its lot
    again = reverse(client, operator, acme.id, "run-1")
    assert_problem(again, 409, "already_reversed")
    assert summary(client, acme.key, acme.id)[0] == "9.995"
    # the id stays used: a retry of the original is still a duplicate, not a new debit
    assert post(client, acme.key, event("run-1", acme.id, "training")).status_code == 200
    assert summary(client, acme.key, acme.id)[0] == "9.995"
    assert_clean(db)


@pytest.mark.parametrize("swept", [True, False], ids=["expiry swept", "expiry not yet swept"])
def test_a_reversal_to_a_lot_that_expired_meanwhile_goes_to_an_adjustment_lot(
    client: TestClient,
    db: Database,
    operator: Headers,
    make_tenant: Callable[..., Org],
    swept: bool,
) -> None:
    acme = make_tenant(credits="5")
    expiring = (T0 + timedelta(hours=1)).isoformat()
    grant(client, operator, acme.id, "10", source="promo", expires_at=expiring)
    post(client, acme.key, event("run-1", acme.id, "training"))  # paid by the expiring lot first
    assert summary(client, acme.key, acme.id)[0] == "8.24"

    with clock.frozen_at(T0 + timedelta(hours=2)):
        if swept:
            tick(db)
        assert summary(client, acme.key, acme.id)[0] == "5"
        response = reverse(client, operator, acme.id, "run-1")
        assert response.status_code == 200, response.text
        assert summary(client, acme.key, acme.id)[0] == "11.76"
    assert sorted(lots(client, acme.id, operator)) == [
        ("adjustment", "6.76", "6.76"),
        ("plan", "5", "5"),
        ("promo", "10", "3.24" if not swept else "0"),
    ]
    assert_clean(db)


def test_a_reversal_of_an_overdrawn_event_gives_back_its_lot_share_and_clears_its_arrears(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    post(client, acme.key, event("run-1", acme.id, "training"))
    post(client, acme.key, event("run-2", acme.id, "training"))  # 3.24 from the lot, 3.52 arrears
    assert summary(client, acme.key, acme.id) == ("-3.52", "3.52", "0", True)

    assert reverse(client, operator, acme.id, "run-2").status_code == 200

    assert summary(client, acme.key, acme.id) == ("3.24", "0", "0", False)
    assert reverse(client, operator, acme.id, "run-1").status_code == 200
    assert summary(client, acme.key, acme.id) == ("10", "0", "0", False)
    assert_clean(db)


def test_a_reversal_after_new_credits_paid_its_arrears_re_credits_as_an_adjustment(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    post(client, acme.key, event("run-1", acme.id, "training"))
    post(client, acme.key, event("run-2", acme.id, "training"))
    grant(client, operator, acme.id, "5")  # pays the 3.52 of arrears
    assert summary(client, acme.key, acme.id) == ("1.48", "0", "0", False)

    assert reverse(client, operator, acme.id, "run-2").json()["credits"] == "6.76"

    # granted 15, consumed 6.76 net
    assert summary(client, acme.key, acme.id) == ("8.24", "0", "0", False)
    assert_clean(db)


def test_only_an_operator_may_reverse_usage(
    client: TestClient, db: Database, make_key: Callable[..., Headers], acme: Org
) -> None:
    post(client, acme.key, event("req-1", acme.id))
    keys = {scope: make_key(acme.id, scope) for scope in ("org:admin", "org:ingest", "org:read")}
    before = state_of(db, acme.id)
    for scope, code in [
        ("org:admin", "operator_only"),
        ("org:ingest", "insufficient_scope"),
        ("org:read", "insufficient_scope"),
    ]:
        assert_problem(reverse(client, keys[scope], acme.id, "req-1"), 403, code)
    assert state_of(db, acme.id) == before


def test_reversing_an_unknown_event_or_another_organizations_is_404(
    client: TestClient, db: Database, operator: Headers, make_tenant: Callable[..., Org]
) -> None:
    acme, globex = make_tenant("Acme AI"), make_tenant("Globex")
    post(client, globex.key, event("globex-only", globex.id))
    before = state_of(db, globex.id), state_of(db, acme.id)
    assert_problem(reverse(client, operator, acme.id, "no-such-event"), 404)
    assert_problem(reverse(client, operator, acme.id, "globex-only"), 404)
    assert_problem(reverse(client, operator, "org_01HZZZZZZZZZZZZZZZZZZZZZZZ", "globex-only"), 404)
    assert (state_of(db, globex.id), state_of(db, acme.id)) == before
    missing_reason = client.post(
        f"/v1/organizations/{globex.id}/usage/globex-only/reverse", json={}, headers=operator
    )
    assert_problem(missing_reason, 422)


def test_one_event_is_one_journal_transaction_and_its_duplicate_writes_none(
    client: TestClient, db: Database, acme: Org
) -> None:
    with db.read() as s:
        before = s.scalar(select(func.count()).select_from(JournalTransaction))
    post(client, acme.key, event("req-1", acme.id))
    post(client, acme.key, event("req-1", acme.id))
    with db.read() as s:
        after = s.scalar(select(func.count()).select_from(JournalTransaction))
    assert after == (before or 0) + 1


def test_a_usage_transaction_is_corrected_per_event_never_through_the_ledger(
    client: TestClient, db: Database, operator: Headers, acme: Org
) -> None:
    """Reversing the whole usage transaction through the journal would bypass the event (and could
    re-credit it twice): it is refused, and the event's own correction still works, once."""
    first = post(client, operator, event("run-1", acme.id, "training"))
    assert first.status_code == 201
    [stored] = stored_events(db, acme.id)
    before = state_of(db, acme.id)
    ledger_reversal = client.post(
        f"/v1/organizations/{acme.id}/ledger/txn_{stored.transaction_id}/reverse",
        json={"reason": "refund the whole batch"},
        headers=operator,
    )
    assert_problem(ledger_reversal, 409, "not_reversible")
    assert state_of(db, acme.id) == before

    assert reverse(client, operator, acme.id, "run-1").status_code == 200
    assert summary(client, acme.key, acme.id)[0] == "10"  # never more than was granted
    assert_problem(reverse(client, operator, acme.id, "run-1"), 409, "already_reversed")
    assert_clean(db)
