"""The synchronous SDK against the fake server: exact amounts, retries that never charge twice,
typed errors for every problem code, and batches of any size from any iterable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

import creditmeter.client as sdk
from creditmeter.client import (
    AuthenticationError,
    Client,
    Conflict,
    ConnectionFailed,
    CreditmeterError,
    HoldNotActive,
    InsufficientCredits,
    NotFound,
    OrganizationSuspended,
    PermissionDenied,
    ProjectBudgetExceeded,
    RateLimited,
    RequestTimedOut,
    ServerError,
    UnexpectedResponse,
    ValidationFailed,
)
from tests.client import API_KEY, BASE_URL, FakeServer, Fault, problem


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer({"org_1": "100", "org_poor": "1"})


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(server: FakeServer, sleeps: Sleeps) -> Iterator[Client]:
    with Client(BASE_URL, API_KEY, transport=server.transport(), backoff=0, sleep=sleeps) as client:
        yield client


def answering(response: httpx.Response) -> Client:
    return Client(
        BASE_URL, API_KEY, transport=httpx.MockTransport(lambda _: response), max_retries=0
    )


# --- importable without the server ----------------------------------------------------------


def test_the_sdk_imports_with_only_the_standard_library_and_httpx() -> None:
    script = textwrap.dedent(
        """
        import sys
        BLOCKED = ["fastapi", "starlette", "sqlalchemy", "pydantic", "pydantic_core", "alembic",
                   "uvicorn", "typer", "rich", "psycopg", "email_validator",
                   "creditmeter.errors", "creditmeter.kit", "creditmeter.api", "creditmeter.config",
                   "creditmeter.ledger", "creditmeter.orgs", "creditmeter.models", "creditmeter.cli"]
        for name in BLOCKED:
            sys.modules[name] = None
        from decimal import Decimal
        import httpx
        import creditmeter.client as sdk

        def handler(request):
            return httpx.Response(200, json={"allowed": True, "reason": "ok",
                                             "available": "5", "estimated_credits": "1.5"})

        with sdk.Client("https://x.test", "k", transport=httpx.MockTransport(handler)) as c:
            answer = c.authorize("org", "inference", credits="1.5")
        assert answer.estimated_credits == Decimal("1.5"), answer
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and
                        m.startswith("creditmeter") and not m.startswith("creditmeter.client"))
        assert loaded == ["creditmeter"], loaded
        for name in BLOCKED:
            assert sys.modules[name] is None, name
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_public_api_is_listed_once_and_documented() -> None:
    assert len(sdk.__all__) == len(set(sdk.__all__))
    for name in sdk.__all__:
        assert hasattr(sdk, name), name
        obj = getattr(sdk, name)
        if isinstance(obj, type):
            assert obj.__doc__, name
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (callable(member) or isinstance(member, property)):
                    assert getattr(obj, attr).__doc__, f"{name}.{attr}"
    for cls in (sdk.Client, sdk.AsyncClient):
        for method in ("authorize", "estimate", "record", "record_batch", "hold", "extend",
                       "settle", "release", "metered"):  # fmt: skip
            assert getattr(cls, method).__doc__, f"{cls.__name__}.{method}"


# --- exact amounts ----------------------------------------------------------------------------


def test_authorize_answers_with_exact_decimals_and_sends_credits_as_a_string(
    client: Client, server: FakeServer
) -> None:
    answer = client.authorize("org_1", "inference", credits=Decimal("12.50"), project="p")
    assert answer.allowed is True
    assert answer.reason == "ok"
    assert answer.available == Decimal("100")
    assert answer.estimated_credits == Decimal("12.5")
    assert isinstance(answer.available, Decimal)
    sent = server.of("/v1/authorize")[0]
    assert sent.json == {
        "organization": "org_1",
        "operation": "inference",
        "project": "p",
        "credits": "12.5",
    }
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["content-type"] == "application/json"


def test_a_refusal_by_the_gate_is_an_answer_not_an_exception(client: Client) -> None:
    answer = client.authorize("org_poor", "inference", quantities={"output_tokens": 1000})
    assert (answer.allowed, answer.reason) == (False, "insufficient_credits")
    assert answer.estimated_credits == Decimal("2")


@pytest.mark.parametrize("bad", [0.1, 1.0, True, object(), [1]])
def test_credits_refuse_floats_bools_and_anything_inexact_before_sending(
    client: Client, server: FakeServer, bad: Any
) -> None:
    with pytest.raises(TypeError, match=r"str, int or decimal\.Decimal"):
        client.authorize("org_1", "inference", credits=bad)
    with pytest.raises(TypeError, match="credits"):
        client.hold("org_1", "training", credits=bad)
    assert server.requests == []


def test_a_float_is_refused_with_the_exact_spelling_to_use_instead(client: Client) -> None:
    with pytest.raises(TypeError, match=r"Decimal\('0\.1'\) or '0\.1'"):
        client.hold("org_1", "training", credits=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        client.extend("hold_1", credits=2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "sent"),
    [(5, "5"), ("12.50", "12.5"), (Decimal("1E+3"), "1000"), (Decimal("0.000001"), "0.000001")],
)
def test_credits_are_sent_as_plain_decimal_strings(
    client: Client, server: FakeServer, given: Any, sent: str
) -> None:
    client.authorize("org_1", "inference", credits=given)
    assert server.of("/v1/authorize")[0].json["credits"] == sent


@pytest.mark.parametrize("bad", ["0.0000001", "abc", "NaN", Decimal("Infinity")])
def test_credits_that_are_not_exact_six_place_decimals_are_a_value_error(
    client: Client, bad: Any
) -> None:
    with pytest.raises(ValueError, match="credits"):
        client.authorize("org_1", "inference", credits=bad)


def test_quantities_keep_ints_and_send_floats_and_decimals_as_exact_strings(
    client: Client, server: FakeServer
) -> None:
    result = client.estimate("training", {"gpu_seconds": 3600, "data_gb": 0.1})
    assert server.of("/v1/estimate")[0].json["quantities"] == {
        "gpu_seconds": 3600,
        "data_gb": "0.1",
    }
    assert result.credits == Decimal("36.05")
    assert sum(line.credits for line in result.breakdown) == result.credits
    assert result.breakdown[0].quantity == Decimal(3600)
    assert result.breakdown[0].rate == Decimal("0.01")
    assert result.rate_card_version == "2026-01"
    with pytest.raises(TypeError, match="gpu_seconds"):
        client.estimate("training", {"gpu_seconds": True})
    with pytest.raises(ValueError, match="finite"):
        client.estimate("training", {"gpu_seconds": float("nan")})


def test_string_quantities_go_as_given_so_classes_like_a100_pass(
    client: Client, server: FakeServer
) -> None:
    with pytest.raises(ValidationFailed, match="accelerator"):
        client.estimate("training", {"gpu_seconds": "1.50", "accelerator": "a100"})
    sent = server.of("/v1/estimate")[0].json["quantities"]
    assert sent == {"gpu_seconds": "1.50", "accelerator": "a100"}


def test_timestamps_must_be_aware_and_go_out_as_utc(client: Client, server: FakeServer) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        client.record("org_1", "inference", {"input_tokens": 1}, occurred_at=datetime(2026, 1, 1))
    at = datetime(2026, 1, 1, 12, tzinfo=UTC) + timedelta(hours=0)
    client.record("org_1", "inference", {"input_tokens": 1}, occurred_at=at)
    assert server.of("/v1/usage")[0].json["occurred_at"] == "2026-01-01T12:00:00Z"


# --- record: one event, at most once ------------------------------------------------------------


def test_record_gives_the_event_a_uuid4_that_is_also_its_idempotency_key(
    client: Client, server: FakeServer
) -> None:
    result = client.record("org_1", "inference", {"input_tokens": 1000, "output_tokens": 500})
    sent = server.of("/v1/usage")[0]
    assert uuid.UUID(sent.json["id"]).version == 4
    assert sent.key == sent.json["id"] == result.id
    assert (result.status, result.credits) == ("applied", Decimal("2"))
    assert result.balance is not None
    assert result.balance.available == Decimal("98")
    assert not result.duplicate


def test_recording_the_same_event_twice_charges_once(client: Client, server: FakeServer) -> None:
    first = client.record("org_1", "inference", {"input_tokens": 1000}, event_id="evt-1")
    again = client.record("org_1", "inference", {"input_tokens": 1000}, event_id="evt-1")
    assert (first.status, again.status) == ("applied", "duplicate")
    assert again.duplicate
    assert server.available["org_1"] == Decimal("99")


def test_the_same_event_id_with_another_body_is_a_conflict(client: Client) -> None:
    client.record("org_1", "inference", {"input_tokens": 1000}, event_id="evt-1")
    with pytest.raises(Conflict) as caught:
        client.record("org_1", "inference", {"input_tokens": 2}, event_id="evt-1")
    assert caught.value.code == "conflict"


# --- retries ---------------------------------------------------------------------------------------


def test_a_503_is_retried_with_the_identical_body_and_idempotency_key(
    client: Client, server: FakeServer, sleeps: Sleeps
) -> None:
    server.faults.append(Fault(status=503))
    result = client.record("org_1", "inference", {"input_tokens": 1000})
    first, second = server.of("/v1/usage")
    assert first.content == second.content
    assert first.key == second.key == result.id
    assert len(sleeps) == 1
    assert server.available["org_1"] == Decimal("99")


def test_a_connection_error_is_retried_with_the_same_key_and_body(
    client: Client, server: FakeServer
) -> None:
    server.faults.append(Fault(error=httpx.ConnectError))
    hold = client.hold("org_1", "training", credits="10")
    first, second = server.of("/v1/holds")
    assert first.content == second.content
    assert first.key is not None
    assert first.key == second.key
    assert hold.credits == Decimal("10")


def test_an_answer_lost_after_the_server_applied_it_is_not_charged_twice(
    client: Client, server: FakeServer
) -> None:
    server.faults.append(Fault(error=httpx.ReadError, after=True))
    result = client.record("org_1", "inference", {"input_tokens": 1000})
    assert len(server.of("/v1/usage")) == 2
    assert result.credits == Decimal("1")
    assert server.available["org_1"] == Decimal("99")


def test_a_hold_whose_answer_was_lost_is_reserved_once(client: Client, server: FakeServer) -> None:
    server.faults.append(Fault(error=httpx.ReadTimeout, after=True))
    hold = client.hold("org_1", "training", credits="30")
    assert server.active_holds == [hold.id]
    assert server.available["org_1"] == Decimal("70")


def test_429_waits_exactly_as_long_as_retry_after_says(
    client: Client, server: FakeServer, sleeps: Sleeps
) -> None:
    server.faults.append(Fault(status=429, headers={"Retry-After": "2"}))
    server.faults.append(Fault(status=429, headers={"Retry-After": "0.5"}))
    client.record("org_1", "inference", {"input_tokens": 1}, event_id="e")
    assert sleeps == [2.0, 0.5]
    assert {r.key for r in server.of("/v1/usage")} == {"e"}
    assert len({r.content for r in server.of("/v1/usage")}) == 1


def test_retry_after_may_be_an_http_date(
    client: Client, server: FakeServer, sleeps: Sleeps
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.faults.append(Fault(status=503, headers={"Retry-After": when}))
    client.authorize("org_1", "inference")
    assert 25 <= sleeps[0] <= 30


def test_a_retry_after_longer_than_a_minute_ends_the_retries(
    client: Client, server: FakeServer, sleeps: Sleeps
) -> None:
    server.faults.append(Fault(status=429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimited) as caught:
        client.authorize("org_1", "inference")
    assert caught.value.retry_after == 3600
    assert caught.value.status == 429
    assert sleeps == []


def test_backoff_doubles_with_jitter_then_the_last_5xx_is_raised(server: FakeServer) -> None:
    sleeps = Sleeps()
    client = Client(BASE_URL, API_KEY, transport=server.transport(), backoff=1, sleep=sleeps)
    server.faults.extend(Fault(status=502) for _ in range(4))
    with pytest.raises(ServerError) as caught:
        client.record("org_1", "inference", {"input_tokens": 1})
    assert caught.value.status == 502
    assert len(server.of("/v1/usage")) == 4
    assert len({r.key for r in server.of("/v1/usage")}) == 1
    assert len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1
    assert 1 <= sleeps[1] <= 2
    assert 2 <= sleeps[2] <= 4
    assert server.available["org_1"] == Decimal("100")


def test_a_network_that_never_answers_is_connection_failed(
    client: Client, server: FakeServer, sleeps: Sleeps
) -> None:
    server.faults.extend(Fault(error=httpx.ConnectError) for _ in range(4))
    with pytest.raises(ConnectionFailed) as caught:
        client.authorize("org_1", "inference")
    assert caught.value.status is None
    assert "after 4 attempt" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(sleeps) == 3


def test_timeouts_on_every_attempt_are_request_timed_out(
    client: Client, server: FakeServer
) -> None:
    server.faults.extend(Fault(error=httpx.ReadTimeout) for _ in range(4))
    with pytest.raises(RequestTimedOut):
        client.authorize("org_1", "inference")
    assert len(server.requests) == 4


def test_a_4xx_is_final_and_not_retried(client: Client, server: FakeServer, sleeps: Sleeps) -> None:
    with pytest.raises(ValidationFailed) as caught:
        client.record("org_1", "cooking", {"eggs": 2})
    assert caught.value.code == "unknown_operation"
    assert len(server.requests) == 1
    assert sleeps == []


def test_max_retries_zero_sends_once(server: FakeServer) -> None:
    client = Client(BASE_URL, API_KEY, transport=server.transport(), max_retries=0)
    server.faults.append(Fault(status=503))
    with pytest.raises(ServerError):
        client.authorize("org_1", "inference")
    assert len(server.requests) == 1


# --- typed errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (402, "insufficient_credits", InsufficientCredits),
        (402, "project_budget_exceeded", ProjectBudgetExceeded),
        (403, "organization_suspended", OrganizationSuspended),
        (422, "validation_failed", ValidationFailed),
        (422, "invalid_credits", ValidationFailed),
        (413, "batch_too_large", ValidationFailed),
        (415, "unsupported_media_type", ValidationFailed),
        (401, "missing_api_key", AuthenticationError),
        (401, "invalid_api_key", AuthenticationError),
        (403, "insufficient_scope", PermissionDenied),
        (403, "operator_only", PermissionDenied),
        (404, "not_found", NotFound),
        (409, "idempotency_key_reused", Conflict),
        (409, "already_reversed", Conflict),
        (409, "event_id_conflict", Conflict),
        (409, "hold_expired", HoldNotActive),
        (409, "hold_already_settled", HoldNotActive),
        (429, "rate_limited", RateLimited),
        (500, "internal_error", ServerError),
        (503, "maintenance", ServerError),
        (418, "teapot", CreditmeterError),
    ],
)
def test_each_problem_code_becomes_its_typed_error(
    status: int, code: str, expected: type[CreditmeterError]
) -> None:
    errors = [{"field": "quantities.gpu_seconds", "message": "must be >= 0", "type": "value"}]
    response = problem(status, code, "what went wrong", errors=errors)
    with pytest.raises(CreditmeterError) as caught:
        answering(response).authorize("org_1", "inference")
    error = caught.value
    assert type(error) is expected
    assert (error.code, error.status, error.detail) == (code, status, "what went wrong")
    assert error.errors == errors
    assert error.title
    assert error.problem_type == f"https://creditmeter.dev/problems/{code.replace('_', '-')}"
    assert error.response is not None
    assert error.response.status_code == status
    assert code in str(error)
    assert f"HTTP {status}" in str(error)


def test_the_gate_refusals_all_derive_from_insufficient_credits() -> None:
    assert issubclass(ProjectBudgetExceeded, InsufficientCredits)
    assert issubclass(OrganizationSuspended, InsufficientCredits)
    assert issubclass(RequestTimedOut, ConnectionFailed)


def test_a_non_problem_error_page_falls_back_on_its_status() -> None:
    page = httpx.Response(
        502, text="<html>Bad gateway</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(ServerError) as caught:
        answering(page).authorize("org_1", "inference")
    assert caught.value.code == "internal_error"
    assert "Bad gateway" in caught.value.detail
    with pytest.raises(NotFound):
        answering(httpx.Response(404, text="nope")).authorize("org_1", "inference")


def test_a_wrong_api_key_is_an_authentication_error(server: FakeServer) -> None:
    client = Client(BASE_URL, "cm_live_wrong", transport=server.transport())
    with pytest.raises(AuthenticationError) as caught:
        client.authorize("org_1", "inference")
    assert caught.value.code == "invalid_api_key"


def test_an_unreadable_success_is_an_unexpected_response() -> None:
    with pytest.raises(UnexpectedResponse, match="authorize"):
        answering(httpx.Response(200, text="<html>login</html>")).authorize("org_1", "inference")
    with pytest.raises(UnexpectedResponse, match="available"):
        answering(httpx.Response(200, json={"allowed": True, "reason": "ok"})).authorize(
            "org_1", "inference"
        )


def test_decimals_in_answers_stay_exact_even_as_json_numbers() -> None:
    body = b'{"allowed": true, "reason": "ok", "available": 0.1, "estimated_credits": 3}'
    answer = answering(httpx.Response(200, content=body)).authorize("org_1", "inference")
    assert answer.available == Decimal("0.1")
    assert answer.estimated_credits == Decimal(3)


# --- record_batch ----------------------------------------------------------------------------


def events(n: int, consumed: list[int] | None = None) -> Iterator[dict[str, Any]]:
    for i in range(n):
        if consumed is not None:
            consumed.append(i)
        event: dict[str, Any] = {
            "organization": "org_1",
            "operation": "inference",
            "quantities": {"input_tokens": 1},
        }
        if i % 2 == 0:
            event["id"] = f"evt-{i}"
        yield event


def test_a_generator_of_12001_events_goes_out_in_three_requests_with_ids_preserved(
    client: Client, server: FakeServer
) -> None:
    consumed: list[int] = []
    sent_before: list[int] = []
    original = server.handle

    def spy(request: httpx.Request) -> httpx.Response:
        sent_before.append(len(consumed))
        return original(request)

    client = Client(BASE_URL, API_KEY, transport=httpx.MockTransport(spy))
    result = client.record_batch(events(12_001, consumed))
    batches = [r.json["events"] for r in server.of("/v1/usage/batch")]
    assert [len(b) for b in batches] == [5_000, 5_000, 2_001]
    assert sent_before == [5_000, 10_000, 12_001], "the generator is consumed one batch at a time"
    sent_ids = [e["id"] for b in batches for e in b]
    assert [item.id for item in result] == sent_ids
    assert sent_ids[0::2] == [f"evt-{i}" for i in range(0, 12_001, 2)]
    assert all(uuid.UUID(i).version == 4 for i in sent_ids[1::2])
    assert len(set(sent_ids)) == 12_001
    assert len(result.applied) == 12_001
    assert len({r.key for r in server.of("/v1/usage/batch")}) == 3
    assert server.available["org_1"] == Decimal("100") - Decimal("12.001")


def test_a_retried_batch_resends_the_same_ids_and_key(client: Client, server: FakeServer) -> None:
    server.faults.append(Fault(status=503, path="/v1/usage/batch"))
    result = client.record_batch(list(events(3)), batch_size=2)
    first, retry, last = server.of("/v1/usage/batch")
    assert first.content == retry.content
    assert first.key == retry.key != last.key
    assert len(result) == 3
    assert server.available["org_1"] == Decimal("99.997")


def test_a_rejected_event_stands_alone(client: Client) -> None:
    batch = [
        {
            "id": "a",
            "organization": "org_1",
            "operation": "inference",
            "quantities": {"input_tokens": 5},
        },
        {"id": "b", "organization": "org_1", "operation": "cooking", "quantities": {"eggs": 2}},
        {
            "id": "a",
            "organization": "org_1",
            "operation": "inference",
            "quantities": {"input_tokens": 5},
        },
    ]
    result = client.record_batch(batch)
    assert [r.status for r in result] == ["applied", "rejected", "duplicate"]
    rejected = result.rejected[0]
    assert rejected.id == "b"
    assert rejected.error is not None
    assert rejected.error.code == "unknown_operation"
    assert isinstance(rejected.error.to_error(), ValidationFailed)
    assert result[0].credits == Decimal("0.005")
    assert len(result.duplicates) == 1


def test_a_batch_that_fails_outright_reports_what_was_applied_and_what_to_resend(
    server: FakeServer,
) -> None:
    batches_seen = 0

    def second_batch_is_down(request: httpx.Request) -> httpx.Response:
        nonlocal batches_seen
        batches_seen += 1
        if batches_seen > 1:
            return problem(500, "internal_error", "down")
        return server.handle(request)

    flaky = Client(
        BASE_URL, API_KEY, transport=httpx.MockTransport(second_batch_is_down), backoff=0
    )
    with pytest.raises(ServerError) as caught:
        flaky.record_batch(events(5), batch_size=2)
    assert batches_seen == 1 + 4, "batch 2 was tried 4 times (3 retries), batch 3 never sent"
    progress = caught.value.batch_progress
    assert progress is not None
    first_batch = server.of("/v1/usage/batch")[0].json["events"]
    assert [r.id for r in progress.results] == [e["id"] for e in first_batch]
    assert [r.status for r in progress.results] == ["applied", "applied"]
    assert len(progress.failed_events) == 2
    assert progress.failed_events[0]["id"] == "evt-2"
    assert uuid.UUID(progress.failed_events[1]["id"]).version == 4
    resend = client_for(server).record_batch([*first_batch, *progress.failed_events])
    assert [r.status for r in resend] == ["duplicate", "duplicate", "applied", "applied"]
    assert server.available["org_1"] == Decimal("99.996")


def client_for(server: FakeServer) -> Client:
    return Client(BASE_URL, API_KEY, transport=server.transport(), backoff=0)


@pytest.mark.parametrize("size", [0, 10_001, -1])
def test_batch_size_is_between_1_and_10000(client: Client, size: int) -> None:
    with pytest.raises(ValueError, match="between 1 and 10000"):
        client.record_batch([], batch_size=size)


def test_record_batch_wants_an_iterable_of_dicts(client: Client, server: FakeServer) -> None:
    with pytest.raises(TypeError, match="iterable of event dicts"):
        client.record_batch({"organization": "org_1"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="mapping"):
        client.record_batch(["not an event"])  # type: ignore[list-item]
    assert client.record_batch([]).results == ()
    assert server.requests == []


def test_the_batch_answer_must_match_the_events_sent() -> None:
    short = httpx.Response(200, json={"results": []})
    with pytest.raises(UnexpectedResponse, match="expected 1 results"):
        answering(short).record_batch([{"organization": "o", "operation": "x", "quantities": {}}])


# --- holds -------------------------------------------------------------------------------------


def test_hold_extend_settle_release(client: Client, server: FakeServer) -> None:
    hold = client.hold("org_1", "training", quantities={"gpu_seconds": 1000}, ttl_seconds=600)
    assert (hold.credits, server.available["org_1"]) == (Decimal("10"), Decimal("90"))
    assert hold.expires_at == datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert (hold.status, hold.operation) == ("active", "training")
    assert hold.raw["organization"] == "org_1"

    extended = client.extend(hold.id, credits="20", ttl_seconds=60)
    assert extended.credits == Decimal("30"), "extend reserves credits on top of the hold"
    assert extended.expires_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    extend = server.of(f"/v1/holds/{hold.id}/extend")[0]
    assert extend.json == {"credits": "20", "ttl_seconds": 60}
    assert extend.key is not None
    assert server.available["org_1"] == Decimal("70")

    settled = client.settle(hold.id, {"gpu_seconds": 1500}, event_id="train-1", member="ada")
    assert settled.credits == Decimal("15")
    assert server.available["org_1"] == Decimal("85"), "the unused 15 came back"
    sent = server.of(f"/v1/holds/{hold.id}/settle")[0]
    assert sent.json == {"id": "train-1", "quantities": {"gpu_seconds": 1500}, "member": "ada"}
    assert sent.key == "train-1"
    again = client.settle(hold.id, {"gpu_seconds": 1500}, event_id="train-1", member="ada")
    assert again.credits == settled.credits
    assert server.available["org_1"] == Decimal("85")
    with pytest.raises(HoldNotActive) as caught:
        client.release(hold.id)
    assert caught.value.code == "hold_settled"
    assert isinstance(caught.value, Conflict)

    other = client.hold("org_1", "training", credits=5)
    client.release(other.id)
    client.release(other.id)
    assert server.available["org_1"] == Decimal("85")
    assert [r.method for r in server.of(f"/v1/holds/{other.id}")] == ["DELETE", "DELETE"]
    with pytest.raises(HoldNotActive, match="released"):
        client.extend(other.id, ttl_seconds=60)
    with pytest.raises(NotFound):
        client.release("hold_404")


def test_extending_beyond_the_balance_is_refused(client: Client, server: FakeServer) -> None:
    hold = client.hold("org_1", "training", credits="60")
    with pytest.raises(InsufficientCredits):
        client.extend(hold.id, credits="50")
    assert server.available["org_1"] == Decimal("40")


def test_a_hold_beyond_the_balance_is_insufficient_credits_and_reserves_nothing(
    client: Client, server: FakeServer
) -> None:
    with pytest.raises(InsufficientCredits) as caught:
        client.hold("org_poor", "training", credits="5")
    assert (caught.value.code, caught.value.status) == ("insufficient_credits", 402)
    assert server.active_holds == []
    assert server.available["org_poor"] == Decimal("1")


def test_hold_arguments_are_checked_before_sending(client: Client, server: FakeServer) -> None:
    with pytest.raises(ValueError, match="not both"):
        client.hold("org_1", "training", credits="1", quantities={"gpu_seconds": 1})
    with pytest.raises(ValueError, match="to hold"):
        client.hold("org_1", "training")
    with pytest.raises(ValueError, match="ttl_seconds"):
        client.hold("org_1", "training", credits="1", ttl_seconds=0)
    with pytest.raises(ValueError, match="extend"):
        client.extend("hold_1")
    with pytest.raises(ValueError, match="hold_id"):
        client.release("")
    assert server.requests == []


def test_hold_ids_are_escaped_in_paths(client: Client, server: FakeServer) -> None:
    with pytest.raises(NotFound):
        client.release("a/b c")
    assert server.requests[0].raw_path == "/v1/holds/a%2Fb%20c"


# --- construction ------------------------------------------------------------------------------


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="base_url"):
        Client("credits.example.com", API_KEY)
    with pytest.raises(ValueError, match="api_key"):
        Client(BASE_URL, " ")
    with pytest.raises(ValueError, match="max_retries"):
        Client(BASE_URL, API_KEY, max_retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        Client(BASE_URL, API_KEY, backoff=-0.1)


def test_the_client_closes_its_pool(server: FakeServer) -> None:
    with Client(BASE_URL, API_KEY, transport=server.transport()) as client:
        pass
    assert client._http.is_closed


def test_a_base_url_with_a_path_prefix_is_kept(server: FakeServer) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        body = {"allowed": True, "reason": "ok", "available": "1", "estimated_credits": "0"}
        return httpx.Response(200, json=body, headers={"content-type": "application/json"})

    Client("https://x.test/credits/", API_KEY, transport=httpx.MockTransport(handler)).authorize(
        "o", "inference"
    )
    assert seen == ["/credits/v1/authorize"]
