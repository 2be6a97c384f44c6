"""The asynchronous client keeps every promise of the synchronous one: same calls, same retries
with the same idempotency keys, same typed errors, same batching of any iterable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest

from creditmeter.client import (
    AsyncClient,
    AuthenticationError,
    ConnectionFailed,
    InsufficientCredits,
    NotFound,
    RateLimited,
    ServerError,
    ValidationFailed,
)
from creditmeter.client._async import _sleep
from tests.client import API_KEY, BASE_URL, FakeServer, Fault, problem

T = TypeVar("T")


class Sleeps(list[float]):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer({"org_1": "100", "org_poor": "1"})


def run(
    server: FakeServer, use: Callable[[AsyncClient], Awaitable[T]], sleeps: Sleeps | None = None
) -> T:
    async def main() -> T:
        async with AsyncClient(
            BASE_URL,
            API_KEY,
            transport=server.transport(),
            backoff=0,
            sleep=Sleeps() if sleeps is None else sleeps,
        ) as client:
            return await use(client)

    return asyncio.run(main())


def test_authorize_estimate_and_record(server: FakeServer) -> None:
    async def use(client: AsyncClient) -> tuple[Any, ...]:
        answer = await client.authorize("org_1", "inference", credits=Decimal("5"))
        estimate = await client.estimate("inference", {"input_tokens": 10, "output_tokens": 0.5})
        first = await client.record("org_1", "inference", {"input_tokens": 1000}, event_id="e1")
        again = await client.record("org_1", "inference", {"input_tokens": 1000}, event_id="e1")
        return answer, estimate, first, again

    answer, estimate, first, again = run(server, use)
    assert (answer.allowed, answer.estimated_credits) == (True, Decimal("5"))
    assert estimate.credits == Decimal("0.011")
    assert server.of("/v1/estimate")[0].json["quantities"] == {
        "input_tokens": 10,
        "output_tokens": "0.5",
    }
    assert (first.status, again.status) == ("applied", "duplicate")
    assert server.available["org_1"] == Decimal("99")


def test_record_generates_a_uuid4_event_id_used_as_the_key(server: FakeServer) -> None:
    result = run(server, lambda c: c.record("org_1", "inference", {"input_tokens": 1}))
    sent = server.of("/v1/usage")[0]
    assert uuid.UUID(result.id).version == 4
    assert sent.key == sent.json["id"] == result.id


def test_floats_are_refused_as_credits(server: FakeServer) -> None:
    async def use(client: AsyncClient) -> None:
        with pytest.raises(TypeError, match="float"):
            await client.authorize("org_1", "inference", credits=0.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="float"):
            await client.hold("org_1", "training", credits=1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="float"):
            await client.extend("hold_1", credits=1.0)  # type: ignore[arg-type]

    run(server, use)
    assert server.requests == []


def test_503_then_success_resends_the_identical_request(server: FakeServer) -> None:
    sleeps = Sleeps()
    server.faults.append(Fault(status=503))
    result = run(server, lambda c: c.record("org_1", "inference", {"input_tokens": 1}), sleeps)
    first, second = server.of("/v1/usage")
    assert first.content == second.content
    assert first.key == second.key == result.id
    assert len(sleeps) == 1
    assert server.available["org_1"] == Decimal("99.999")


def test_a_connection_error_then_success_resends_the_identical_request(
    server: FakeServer,
) -> None:
    server.faults.append(Fault(error=httpx.ConnectError))
    hold = run(server, lambda c: c.hold("org_1", "training", credits="10"))
    first, second = server.of("/v1/holds")
    assert first.content == second.content
    assert first.key == second.key
    assert first.key is not None
    assert hold.credits == Decimal("10")


def test_a_lost_answer_is_not_charged_twice(server: FakeServer) -> None:
    server.faults.append(Fault(error=httpx.ReadError, after=True))
    result = run(server, lambda c: c.record("org_1", "inference", {"input_tokens": 1000}))
    assert result.credits == Decimal("1")
    assert server.available["org_1"] == Decimal("99")


def test_429_honours_retry_after(server: FakeServer) -> None:
    sleeps = Sleeps()
    server.faults.append(Fault(status=429, headers={"Retry-After": "3"}))
    run(server, lambda c: c.authorize("org_1", "inference"), sleeps)
    assert sleeps == [3.0]
    assert len(server.requests) == 2


def test_retries_end_with_the_typed_error(server: FakeServer) -> None:
    sleeps = Sleeps()
    server.faults.extend(Fault(status=500) for _ in range(4))
    with pytest.raises(ServerError):
        run(server, lambda c: c.authorize("org_1", "inference"), sleeps)
    assert len(sleeps) == 3
    server.faults = [Fault(error=httpx.ConnectTimeout) for _ in range(4)]
    with pytest.raises(ConnectionFailed):
        run(server, lambda c: c.authorize("org_1", "inference"))
    server.faults = [Fault(status=429, headers={"Retry-After": "600"})]
    with pytest.raises(RateLimited):
        run(server, lambda c: c.authorize("org_1", "inference"))


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (402, "insufficient_credits", InsufficientCredits),
        (401, "invalid_api_key", AuthenticationError),
        (404, "not_found", NotFound),
        (422, "validation_failed", ValidationFailed),
    ],
)
def test_typed_errors(status: int, code: str, expected: type[Exception]) -> None:
    async def main() -> None:
        transport = httpx.MockTransport(lambda _: problem(status, code, "no"))
        async with AsyncClient(BASE_URL, API_KEY, transport=transport) as client:
            await client.hold("org_1", "training", credits="1")

    with pytest.raises(expected) as caught:
        asyncio.run(main())
    assert caught.value.code == code  # type: ignore[attr-defined]


def test_record_batch_chunks_a_generator_of_12001_events(server: FakeServer) -> None:
    def events() -> Iterator[dict[str, Any]]:
        for i in range(12_001):
            yield {
                "id": f"e{i}",
                "organization": "org_1",
                "operation": "inference",
                "quantities": {"input_tokens": 1},
            }

    result = run(server, lambda c: c.record_batch(events()))
    sent = server.of("/v1/usage/batch")
    assert [len(r.json["events"]) for r in sent] == [5_000, 5_000, 2_001]
    assert [item.id for item in result] == [f"e{i}" for i in range(12_001)]
    assert len({r.key for r in sent}) == 3


def test_record_batch_takes_an_async_generator(server: FakeServer) -> None:
    async def events() -> AsyncIterator[dict[str, Any]]:
        for i in range(5):
            await asyncio.sleep(0)
            yield {
                "organization": "org_1",
                "operation": "inference",
                "quantities": {"input_tokens": 1000},
                **({"id": f"a{i}"} if i != 4 else {}),
            }

    result = run(server, lambda c: c.record_batch(events(), batch_size=2))
    sent = server.of("/v1/usage/batch")
    assert [len(r.json["events"]) for r in sent] == [2, 2, 1]
    assert [item.id for item in result][:4] == ["a0", "a1", "a2", "a3"]
    assert uuid.UUID(result[4].id).version == 4
    assert server.available["org_1"] == Decimal("95")
    with pytest.raises(ValueError, match="batch_size"):
        run(server, lambda c: c.record_batch(events(), batch_size=0))


def test_record_batch_failure_carries_the_progress(server: FakeServer) -> None:
    events = [
        {"organization": "org_1", "operation": "inference", "quantities": {"input_tokens": 1}}
        for _ in range(3)
    ]
    server.faults.extend(Fault(status=503, path="/v1/usage/batch") for _ in range(4))
    with pytest.raises(ServerError) as caught:
        run(server, lambda c: c.record_batch(events, batch_size=2))
    progress = caught.value.batch_progress
    assert progress is not None
    assert len(progress.results) == 0
    assert len(progress.failed_events) == 2
    sent_ids = {r.json["events"][0]["id"] for r in server.of("/v1/usage/batch")}
    assert sent_ids == {progress.failed_events[0]["id"]}, "every retry carried the same ids"
    assert "id" not in events[0], "the caller's dicts are not changed"


def test_hold_extend_settle_release(server: FakeServer) -> None:
    async def use(client: AsyncClient) -> Decimal:
        hold = await client.hold("org_1", "training", quantities={"gpu_seconds": 1000})
        hold = await client.extend(hold.id, ttl_seconds=60)
        result = await client.settle(hold.id, {"gpu_seconds": 500}, event_id="s1")
        other = await client.hold("org_1", "training", credits="3")
        await client.release(other.id)
        return result.credits

    assert run(server, use) == Decimal("5")
    assert server.available["org_1"] == Decimal("95")
    assert server.active_holds == []


def test_close_is_an_alias_of_aclose(server: FakeServer) -> None:
    async def main() -> bool:
        client = AsyncClient(BASE_URL, API_KEY, transport=server.transport())
        await client.close()
        return client._http.is_closed

    assert asyncio.run(main())


def test_the_default_sleep_works_in_asyncio() -> None:
    asyncio.run(_sleep(0))
