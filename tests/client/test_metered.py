"""``metered``: a training run holds its estimate, settles what it really used, and is charged
nothing when it fails; without a hold the gate is asked first and the usage recorded after."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from decimal import Decimal

import pytest

from creditmeter.client import (
    AsyncClient,
    Client,
    HoldNotActive,
    InsufficientCredits,
    Meter,
    ProjectBudgetExceeded,
    ServerError,
    _metered,
)
from tests.client import API_KEY, BASE_URL, FakeServer, Fault


@pytest.fixture
def server() -> FakeServer:
    return FakeServer({"org_1": "100", "org_poor": "1"})


@pytest.fixture
def client(server: FakeServer) -> Iterator[Client]:
    with Client(
        BASE_URL, API_KEY, transport=server.transport(), backoff=0, sleep=lambda _: None
    ) as client:
        yield client


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The meter's clock reads these values in turn (start, then stop)."""
    readings = [1000.0, 1000.0, 1090.5004]
    monkeypatch.setattr(_metered, "clock", lambda: readings.pop(0))
    return readings


def async_client(server: FakeServer) -> AsyncClient:
    async def no_wait(_: float) -> None:
        return None

    return AsyncClient(BASE_URL, API_KEY, transport=server.transport(), backoff=0, sleep=no_wait)


class Boom(RuntimeError):
    pass


def run_block(
    context: AbstractContextManager[Meter], body: Callable[[Meter], object], seen: list[Meter]
) -> None:
    """Run ``body`` inside ``metered`` and keep the meter for the assertions after it."""
    with context as meter:
        seen.append(meter)
        body(meter)


def never(_: Meter) -> None:
    pytest.fail("the block must not run")


def explode(_: Meter) -> None:
    raise Boom("the GPU caught fire")


# --- with a hold --------------------------------------------------------------------------


def test_a_training_run_holds_its_estimate_and_settles_what_it_used(
    client: Client, server: FakeServer
) -> None:
    with client.metered(
        "org_1", "training", project="p1", estimate={"gpu_seconds": 3000}, event_id="run-7"
    ) as m:
        assert m.hold is not None
        assert m.hold.credits == Decimal("30")
        assert server.available["org_1"] == Decimal("70"), "the estimate is held during the run"
        m.set(gpu_seconds=1200)
        m.quantities["data_gb"] = Decimal("2.5")
    assert m.result is not None
    assert m.result.credits == Decimal("13.25")
    assert m.result.id == "run-7"
    assert server.available["org_1"] == Decimal("86.75"), "the rest of the hold came back"
    assert server.active_holds == []
    hold_sent = server.of("/v1/holds")[0].json
    assert hold_sent == {
        "organization": "org_1",
        "project": "p1",
        "operation": "training",
        "quantities": {"gpu_seconds": 3000},
        "ttl_seconds": 3600,
    }
    settle = server.of(f"/v1/holds/{m.hold.id}/settle")[0]
    assert settle.json == {"id": "run-7", "quantities": {"gpu_seconds": 1200, "data_gb": "2.5"}}
    assert settle.key == "run-7"


def test_a_failed_run_releases_its_hold_and_is_charged_nothing(
    client: Client, server: FakeServer
) -> None:
    seen: list[Meter] = []
    with pytest.raises(Boom):
        run_block(client.metered("org_1", "training", estimate="40"), explode, seen)
    m = seen[0]
    assert m.hold is not None
    assert server.of(f"/v1/holds/{m.hold.id}")[0].method == "DELETE"
    assert server.of(f"/v1/holds/{m.hold.id}/settle") == []
    assert m.result is None
    assert server.available["org_1"] == Decimal("100")
    assert server.events == {}


def test_a_release_that_fails_too_leaves_the_original_error_with_a_note(
    client: Client, server: FakeServer
) -> None:
    def release_is_down_too(_: Meter) -> None:
        server.faults = [Fault(status=503) for _ in range(4)]
        raise Boom("failed")

    with pytest.raises(Boom) as caught:
        run_block(client.metered("org_1", "training", estimate="40"), release_is_down_too, [])
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "releasing hold hold_1 failed too" in notes
    assert "expires at 2026-01-01T01:00:00+00:00" in notes


def test_measure_records_the_wall_clock_seconds(
    client: Client, server: FakeServer, ticking: list[float]
) -> None:
    with client.metered(
        "org_1", "training", estimate={"gpu_seconds": 100}, measure="gpu_seconds"
    ) as m:
        pass
    assert m.elapsed == Decimal("90.500")
    assert m.hold is not None
    sent = server.of(f"/v1/holds/{m.hold.id}/settle")[0].json
    assert sent["quantities"] == {"gpu_seconds": "90.5"}
    assert m.final_quantities == {"gpu_seconds": Decimal("90.5")}
    assert m.result is not None
    assert m.result.credits == Decimal("0.905")


def test_a_quantity_the_block_set_itself_wins_over_the_measurement(
    client: Client, server: FakeServer, ticking: list[float]
) -> None:
    with client.metered("org_1", "training", estimate="1", measure="gpu_seconds") as m:
        m.set(gpu_seconds=7)
    assert m.elapsed == Decimal("90.500")
    assert m.hold is not None
    assert server.of(f"/v1/holds/{m.hold.id}/settle")[0].json["quantities"] == {"gpu_seconds": 7}


def test_a_hold_the_balance_cannot_cover_never_runs_the_block(
    client: Client, server: FakeServer
) -> None:
    ran = False
    with pytest.raises(InsufficientCredits), client.metered("org_poor", "training", estimate="5"):
        ran = True
    assert not ran
    assert server.active_holds == []


def test_a_settle_retried_after_a_503_uses_the_event_id_as_its_key(
    client: Client, server: FakeServer
) -> None:
    with client.metered("org_1", "training", estimate="5") as m:
        m.set(gpu_seconds=100)
        server.faults.append(Fault(status=503))
    assert m.hold is not None
    first, retry = server.of(f"/v1/holds/{m.hold.id}/settle")
    assert first.content == retry.content
    assert first.key == retry.key == m.event_id
    assert server.available["org_1"] == Decimal("99")


def test_a_settle_that_fails_for_good_raises_and_can_be_resent_by_hand(
    client: Client, server: FakeServer
) -> None:
    def settle_will_fail(m: Meter) -> None:
        m.set(gpu_seconds=100)
        server.faults.extend(Fault(status=500) for _ in range(4))

    seen: list[Meter] = []
    with pytest.raises(ServerError):
        run_block(client.metered("org_1", "training", estimate="5"), settle_will_fail, seen)
    m = seen[0]
    assert m.hold is not None
    assert m.hold.id in server.active_holds, "not released: the work was done"
    result = client.settle(m.hold.id, m.quantities, event_id=m.event_id)
    assert result.credits == Decimal("1")


def test_a_run_that_outlives_its_hold_is_still_recorded(client: Client, server: FakeServer) -> None:
    with client.metered(
        "org_1", "training", project="p1", estimate="50", ttl_seconds=60, event_id="long-run"
    ) as m:
        m.set(gpu_seconds=2000)
        assert m.hold is not None
        server.expire(m.hold.id)
    assert m.result is not None
    assert (m.result.id, m.result.credits) == ("long-run", Decimal("20"))
    assert [r.path for r in server.requests] == [
        "/v1/holds",
        f"/v1/holds/{m.hold.id}/settle",
        "/v1/usage",
    ]
    assert server.of("/v1/usage")[0].json == {
        "id": "long-run",
        "organization": "org_1",
        "project": "p1",
        "operation": "training",
        "quantities": {"gpu_seconds": 2000},
    }
    assert server.available["org_1"] == Decimal("80")


def test_a_hold_settled_by_someone_else_is_not_recorded_twice(
    client: Client, server: FakeServer
) -> None:
    def settled_elsewhere(m: Meter) -> None:
        assert m.hold is not None
        server.holds[m.hold.id]["status"] = "settled"

    with pytest.raises(HoldNotActive) as caught:
        run_block(client.metered("org_1", "training", estimate="5"), settled_elsewhere, [])
    assert caught.value.code == "hold_settled"
    assert server.of("/v1/usage") == []


def test_a_wrong_quantity_fails_at_once_and_releases_the_hold(
    client: Client, server: FakeServer
) -> None:
    with pytest.raises(TypeError), client.metered("org_1", "training", estimate="5") as m:
        m.set(gpu_seconds=True)
    with pytest.raises(TypeError), client.metered("org_1", "training", estimate="5") as m:
        m.quantities["gpu_seconds"] = object()  # type: ignore[assignment]
    assert server.active_holds == []
    assert server.available["org_1"] == Decimal("100")


def test_estimates_are_checked_like_any_credits(client: Client, server: FakeServer) -> None:
    with pytest.raises(TypeError, match="float"), client.metered("org_1", "training", estimate=2.5):  # type: ignore[arg-type]
        pass
    with pytest.raises(ValueError, match="to hold"), client.metered("org_1", "training"):
        pass
    assert server.requests == []


# --- without a hold ---------------------------------------------------------------------------


def test_without_a_hold_the_gate_is_asked_and_the_usage_recorded_after(
    client: Client, server: FakeServer
) -> None:
    with client.metered(
        "org_1", "inference", hold=False, estimate={"output_tokens": 100}, metadata={"model": "m1"}
    ) as m:
        assert m.authorization is not None
        assert m.authorization.allowed
        m.set(input_tokens=1000, output_tokens=250)
        m.cache_hit = True
    assert m.result is not None
    assert m.result.credits == Decimal("1.5")
    sent = server.of("/v1/usage")[0]
    assert sent.json == {
        "id": m.event_id,
        "organization": "org_1",
        "operation": "inference",
        "quantities": {"input_tokens": 1000, "output_tokens": 250},
        "cache_hit": True,
        "metadata": {"model": "m1"},
    }
    assert sent.key == m.event_id
    assert server.of("/v1/holds") == []


def test_without_a_hold_a_refusal_raises_the_reason_as_its_error(
    client: Client, server: FakeServer
) -> None:
    with pytest.raises(InsufficientCredits) as caught:
        run_block(client.metered("org_poor", "inference", hold=False, estimate="5"), never, [])
    assert caught.value.code == "insufficient_credits"
    assert "available 1" in caught.value.detail
    server.budget_exceeded.add("p9")
    with pytest.raises(ProjectBudgetExceeded):
        run_block(client.metered("org_1", "inference", hold=False, project="p9"), never, [])
    assert server.of("/v1/usage") == []


def test_without_a_hold_an_error_records_nothing(client: Client, server: FakeServer) -> None:
    with pytest.raises(Boom), client.metered("org_1", "inference", hold=False):
        raise Boom
    assert server.of("/v1/usage") == []
    assert [r.path for r in server.requests] == ["/v1/authorize"]


def test_the_meter_describes_itself() -> None:
    meter = Meter("org_1", "training", event_id="e1")
    meter.set(gpu_seconds=1)
    assert "event_id='e1'" in repr(meter)
    assert "gpu_seconds" in repr(meter)


# --- async ------------------------------------------------------------------------------------


def test_async_metered_settles_on_success(server: FakeServer, ticking: list[float]) -> None:
    async def main() -> Meter:
        async with async_client(server) as client:
            async with client.metered(
                "org_1", "training", estimate={"gpu_seconds": 500}, measure="gpu_seconds"
            ) as m:
                assert server.available["org_1"] == Decimal("95")
            return m

    m = asyncio.run(main())
    assert m.result is not None
    assert m.result.credits == Decimal("0.905")
    assert server.available["org_1"] == Decimal("99.095")
    assert server.active_holds == []


def test_async_metered_releases_on_error(server: FakeServer) -> None:
    async def main() -> None:
        async with (
            async_client(server) as client,
            client.metered("org_1", "training", estimate="50"),
        ):
            raise Boom

    with pytest.raises(Boom):
        asyncio.run(main())
    assert [r.method for r in server.requests] == ["POST", "DELETE"]
    assert server.available["org_1"] == Decimal("100")


def test_async_metered_releases_when_the_task_is_cancelled(server: FakeServer) -> None:
    async def main() -> None:
        async with (
            async_client(server) as client,
            client.metered("org_1", "training", estimate="50"),
        ):
            await asyncio.sleep(3600)

    async def run() -> None:
        task = asyncio.create_task(main())
        while not server.active_holds:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert server.active_holds == []
    assert server.available["org_1"] == Decimal("100")


def test_async_metered_without_a_hold_records_or_refuses(server: FakeServer) -> None:
    async def main() -> Meter:
        async with async_client(server) as client:
            with pytest.raises(InsufficientCredits):
                async with client.metered("org_poor", "inference", hold=False, estimate="2"):
                    pytest.fail("the block must not run")
            async with client.metered("org_1", "inference", hold=False) as m:
                m.set(input_tokens=2000)
            return m

    m = asyncio.run(main())
    assert m.result is not None
    assert m.result.credits == Decimal("2")


def test_async_metered_records_a_run_that_outlived_its_hold(server: FakeServer) -> None:
    async def main() -> Meter:
        async with async_client(server) as client:
            async with client.metered("org_1", "training", estimate="50") as m:
                assert m.hold is not None
                server.expire(m.hold.id)
                m.set(data_gb=4)
            return m

    m = asyncio.run(main())
    assert m.result is not None
    assert m.result.credits == Decimal("2")
    assert server.available["org_1"] == Decimal("98")
