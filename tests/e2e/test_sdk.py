"""The Python SDK against a real `creditmeter serve` process: what an AI Engine would do."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from creditmeter.client import Client, InsufficientCredits
from tests.e2e.test_serve import _serve


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    yield from _serve(f"sqlite:///{tmp_path / 'var' / 'creditmeter.db'}", tmp_path)


def _available(base: str, key: str, org: str) -> Decimal:
    headers = {"Authorization": f"Bearer {key}"}
    org_id = next(
        o["id"]
        for o in httpx.get(f"{base}/v1/organizations", headers=headers).json()["data"]
        if o["external_id"] == org
    )
    balance = httpx.get(f"{base}/v1/organizations/{org_id}/balance", headers=headers).json()
    return Decimal(balance["available"])


def test_an_ai_engine_meters_its_work_through_the_sdk(server: tuple[str, str, str]) -> None:
    base, key, _ = server
    with Client(base, key) as credits:
        before = _available(base, key, "demo-acme")
        decision = credits.authorize(
            "demo-acme", "inference", quantities={"input_tokens": 2000, "output_tokens": 500}
        )
        assert decision.allowed
        assert decision.reason == "ok"

        single = credits.record(
            "demo-acme",
            "inference",
            {"input_tokens": 2000, "output_tokens": 500},
            event_id="sdk-e2e-1",
            project="chatbot",
        )
        assert single.status == "applied"
        again = credits.record(
            "demo-acme",
            "inference",
            {"input_tokens": 2000, "output_tokens": 500},
            event_id="sdk-e2e-1",
            project="chatbot",
        )
        assert again.status == "duplicate"

        events = (
            {
                "id": f"sdk-batch-{i}",
                "organization": "demo-acme",
                "operation": "inference",
                "quantities": {"input_tokens": str(1000 + i), "output_tokens": "100"},
            }
            for i in range(1200)
        )
        batch = credits.record_batch(events, batch_size=500)
        assert len(batch.results) == 1200
        assert {r.status for r in batch.results} == {"applied"}
        batch_total = sum((r.credits for r in batch.results if r.credits is not None), Decimal(0))

        with credits.metered(
            "demo-acme",
            "training",
            estimate={"gpu_seconds": 3600, "accelerator": "a100"},
            event_id="sdk-train-1",
        ) as meter:
            meter.quantities = {"gpu_seconds": 1800, "accelerator": "a100"}
        assert meter.result is not None
        training = meter.result.credits

        with pytest.raises(InsufficientCredits):
            credits.hold("demo-acme", "training", credits="100000000")

    after = _available(base, key, "demo-acme")
    assert after == before - single.credits - batch_total - training
