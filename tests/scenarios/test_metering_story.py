"""March at Acme AI, as the AI Engine lives it.

"Credits are consumed whenever you use the AI Engine for tasks such as: Model training, Inference
requests, Data processing operations. Different operations consume different amounts of credits
based on their computational intensity." Acme's developers rehearse in the sandbox first. The AI
Engine asks the gate before a training run, holds its estimate, extends the hold when the run goes
long and settles it with what the run really used; it serves inference in batches (one is resent after
a timeout and charged once); batch processing moves off-peak because it is cheaper there. The Research
project reaches its monthly budget while Production keeps serving. Then a spike of traffic runs the
organization out: the usage is still recorded, the excess becomes arrears and Acme is paused, until a
credit package arrives, pays the arrears and Acme resumes by itself. An operator corrects a failed job.
Globex, on the same platform, never sees any of it, and at the end the ledger proves itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from creditmeter.kit import clock
from creditmeter.kit.db import Database
from creditmeter.metering.models import UsageEvent
from creditmeter.worker.runner import tick
from tests.conftest import utc
from tests.metering import Headers, assert_breakdown_sums, assert_clean

H100 = "h100"


def hours_of(accelerator: str, hours: int, **more: str) -> dict[str, str]:
    return {"gpu_seconds": str(hours * 3600), "accelerator": accelerator, **more}


class Platform:
    """The v1 API as the operator, Acme's admin and Acme's AI Engine use it."""

    def __init__(self, client: TestClient, operator: Headers) -> None:
        self.client, self.operator = client, operator

    def call(self, method: str, path: str, headers: Headers, status: int = 200, **kw: Any) -> Any:
        response = self.client.request(method, path, headers=headers, **kw)
        assert response.status_code == status, response.text
        return response.json()

    def key(self, org: str, headers: Headers, name: str, scope: str, env: str = "live") -> Headers:
        body = {"name": name, "scopes": [scope], "environment": env}
        created = self.call("POST", f"/v1/organizations/{org}/api-keys", headers, 201, json=body)
        return {"Authorization": f"Bearer {created['key']}"}

    def grant(self, org: str, credits: str, source: str, reason: str, **extra: Any) -> Any:
        params = {"environment": extra.pop("environment")} if "environment" in extra else {}
        body = {"credits": credits, "source": source, "reason": reason, **extra}
        return self.call(
            "POST", f"/v1/organizations/{org}/grants", self.operator, 201, json=body, params=params
        )

    def balance(self, org: str, headers: Headers) -> tuple[str, str, str, bool]:
        b = self.call("GET", f"/v1/organizations/{org}/balance", headers)
        return b["available"], b["arrears"], b["held"], b["paused"]

    def authorize(self, engine: Headers, org: str, operation: str, **body: Any) -> Any:
        return self.call(
            "POST",
            "/v1/authorize",
            engine,
            json={"organization": org, "operation": operation, **body},
        )

    def batch(self, engine: Headers, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self.call(
            "POST", "/v1/usage/batch", engine, json={"events": events}
        )["results"]
        return results


def inference_requests(prefix: str, org: str, count: int) -> list[dict[str, Any]]:
    """``count`` chat requests of 1,200 prompt and 300 generated tokens; every fourth is answered
    from the cache."""
    return [
        {
            "id": f"{prefix}-{i:04d}",
            "organization": org,
            "project": "Production",
            "operation": "inference",
            "quantities": {"input_tokens": "1200", "output_tokens": "300"},
            "cache_hit": i % 4 == 0,
            "metadata": {"model": "acme-chat-7b"},
        }
        for i in range(count)
    ]


def test_march_at_acme_ai_as_the_ai_engine_lives_it(
    client: TestClient, db: Database, operator: Headers, make_key: Callable[..., Headers]
) -> None:
    platform = Platform(client, operator)

    # -- March 2nd: the operator signs Acme AI up; Acme's admin issues keys -------------------------
    with clock.frozen_at(utc(2026, 3, 2, 9)):
        org = platform.call(
            "POST",
            "/v1/organizations",
            operator,
            201,
            json={"name": "Acme AI", "external_id": "acme"},
        )["id"]
        projects = {
            name: platform.call(
                "POST", f"/v1/organizations/{org}/projects", operator, 201, json={"name": name}
            )["id"]
            for name in ("Research", "Production")
        }
        platform.call(
            "POST",
            f"/v1/organizations/{org}/members",
            operator,
            201,
            json={"email": "ada@acme.ai", "role": "owner"},
        )
        admin = platform.key(org, operator, "Ada", "org:admin")
        engine = platform.key(org, admin, "AI Engine", "org:ingest")
        # (a live admin key cannot mint test keys; the operator issues the staging key)
        sandbox = platform.key(org, operator, "AI Engine (staging)", "org:ingest", env="test")
        # The Standard plan: 1,000 credits for March, expiring at the end of the cycle.
        platform.grant(
            org, "1000", "plan", "Standard plan, March 2026", expires_at="2026-04-01T00:00:00Z"
        )
        # Research may spend at most 600 credits a month of the shared pool.
        budget = platform.call(
            "PUT",
            f"/v1/organizations/{org}/projects/{projects['Research']}/budget",
            admin,
            json={"monthly_credits": "600"},
        )
        assert (budget["monthly_credits"], budget["used_this_month"]) == ("600", "0")

        globex = platform.call("POST", "/v1/organizations", operator, 201, json={"name": "Globex"})
        globex_key = make_key(globex["id"], "org:admin")
        platform.grant(globex["id"], "100", "plan", "Standard plan, March 2026")

        # "Use development environments for testing before running operations in production":
        # staging runs on sandbox credits and never touches the live balance.
        platform.grant(org, "50", "promo", "sandbox credits", environment="test")
        staged = platform.batch(sandbox, inference_requests("staging", org, 10))
        assert {r["status"] for r in staged} == {"applied"}
        assert platform.balance(org, sandbox) == ("49.9643", "0", "0", False)
        assert platform.balance(org, engine) == ("1000", "0", "0", False)

    # -- March 3rd: a training run, gated and held ----------------------------------------------
    with clock.frozen_at(utc(2026, 3, 3, 10)):
        estimate = hours_of(H100, 8)  # eight H100 hours: 1 + 28,800 x 0.0016 = 47.08
        answer = platform.authorize(
            engine, org, "training", project="Research", quantities=estimate
        )
        assert answer == {
            "allowed": True,
            "reason": "ok",
            "available": "1000",
            "estimated_credits": "47.08",
        }
        hold = platform.call(
            "POST",
            "/v1/holds",
            engine,
            201,
            json={
                "organization": "acme",
                "project": "Research",
                "operation": "training",
                "quantities": estimate,
                "ttl_seconds": 10 * 3600,
            },
        )
        assert (hold["credits"], hold["expires_at"]) == ("47.08", "2026-03-03T20:00:00Z")
        # What is held is no longer available to anyone else.
        assert platform.balance(org, engine) == ("952.92", "0", "47.08", False)

    with clock.frozen_at(utc(2026, 3, 3, 16)):
        # The run goes long: reserve 20 more credits, until five hours from now.
        longer = platform.call(
            "POST",
            f"/v1/holds/{hold['id']}/extend",
            engine,
            json={"credits": "20", "ttl_seconds": 5 * 3600},
        )
        assert (longer["credits"], longer["expires_at"]) == ("67.08", "2026-03-03T21:00:00Z")

    with clock.frozen_at(utc(2026, 3, 3, 19, 30)):
        # It really used ten H100 hours and read 50 GB: 1 + 57.6 + 2.5 = 61.1 credits.
        settle = {"id": "train-llama-0303", "quantities": hours_of(H100, 10, data_gb="50")}
        settled = platform.call("POST", f"/v1/holds/{hold['id']}/settle", engine, 201, json=settle)
        assert (settled["status"], settled["credits"]) == ("applied", "61.1")
        # "Detailed breakdowns are available": processing time, data volume, the base charge.
        assert [(line["component"], line["credits"]) for line in settled["breakdown"]] == [
            ("base", "1"),
            ("data_gb", "2.5"),
            ("gpu_seconds:h100", "57.6"),
        ]
        assert_breakdown_sums(settled)
        assert settled["balance"] == {"available": "938.9", "arrears": "0", "paused": False}
        # The engine's retry after a timeout is answered with the same result, charged once.
        retry = platform.call("POST", f"/v1/holds/{hold['id']}/settle", engine, 200, json=settle)
        assert (retry["status"], retry["credits"]) == ("duplicate", "61.1")
        assert platform.balance(org, engine) == ("938.9", "0", "0", False)

    # -- March 4th: Production serves inference in batches ---------------------------------------
    with clock.frozen_at(utc(2026, 3, 4, 12)):
        # 750 requests at 0.0042 and 250 cache hits at half price: 3.675 credits per batch.
        batches = [inference_requests(f"chat-0304-{n}", org, 1000) for n in range(3)]
        for events in batches:
            results = platform.batch(engine, events)
            assert {r["status"] for r in results} == {"applied"}
            assert sum(r["credits"] == "0.0042" for r in results) == 750
        # The second batch is resent after a timeout: all duplicates, nothing charged twice.
        resent = platform.batch(engine, batches[1])
        assert {r["status"] for r in resent} == {"duplicate"}
        assert platform.balance(org, engine) == ("927.875", "0", "0", False)

        # "Schedule batch processing during off-peak hours": the same job, priced by the gate at
        # two o'clock and at eleven at night.
        job = {
            "operation": "data_processing",
            "quantities": {"cpu_seconds": "180000", "data_gb": "400", "instance_class": "highmem"},
        }
        day = platform.call(
            "POST", "/v1/estimate", engine, json={**job, "occurred_at": "2026-03-04T14:00:00Z"}
        )
        night = platform.call(
            "POST", "/v1/estimate", engine, json={**job, "occurred_at": "2026-03-04T23:00:00Z"}
        )
        assert (day["credits"], night["credits"]) == ("9.5", "6.65")
        assert night["breakdown"][-1]["component"] == "off_peak"

    with clock.frozen_at(utc(2026, 3, 4, 23, 5)):
        ran = platform.call(
            "POST",
            "/v1/usage",
            engine,
            201,
            json={
                "id": "etl-0304",
                "organization": org,
                "project": "Production",
                "occurred_at": "2026-03-04T23:00:00Z",
                **job,
            },
        )
        assert ran["credits"] == "6.65"
        assert ran["balance"] == {"available": "921.225", "arrears": "0", "paused": False}

    # -- March 10th: Research reaches its budget; Production keeps serving -------------------------
    with clock.frozen_at(utc(2026, 3, 10, 10)):
        big = hours_of(H100, 60)  # 1 + 216,000 x 0.0016 = 346.6 credits
        run = platform.call(
            "POST",
            "/v1/holds",
            engine,
            201,
            json={"organization": org, "project": "Research", "operation": "training",
                  "quantities": big},
        )  # fmt: skip
        platform.call(
            "POST",
            f"/v1/holds/{run['id']}/settle",
            engine,
            201,
            json={"id": "train-0310", "quantities": big},
        )
        used = platform.call(
            "PUT",
            f"/v1/organizations/{org}/projects/{projects['Research']}/budget",
            admin,
            json={"monthly_credits": "600"},
        )["used_this_month"]
        assert used == "407.7"  # 61.1 + 346.6
        refused = platform.authorize(engine, org, "training", project="Research", quantities=big)
        assert (refused["allowed"], refused["reason"]) == (False, "project_budget_exceeded")
        no_hold = client.post(
            "/v1/holds",
            json={"organization": org, "project": "Research", "operation": "training",
                  "quantities": big},
            headers=engine,
        )  # fmt: skip
        assert (no_hold.status_code, no_hold.json()["code"]) == (402, "project_budget_exceeded")
        serving = platform.authorize(engine, org, "inference", project="Production")
        assert (serving["allowed"], serving["available"]) == (True, "574.625")

    # -- March 20th: a traffic spike runs Acme out of credits ------------------------------------
    with clock.frozen_at(utc(2026, 3, 20, 15)):
        spike = [
            {
                "id": f"spike-{i:03d}",
                "organization": org,
                "project": "Production",
                "operation": "inference",
                "quantities": hours_of(H100, 1),  # a dedicated endpoint hour: 5.76
            }
            for i in range(100)
        ]
        results = platform.batch(engine, spike)
        # The usage was performed, so all of it is recorded: 576 credits against 574.625.
        assert {r["status"] for r in results} == {"applied"}
        # "New AI Engine operations will be paused until you purchase additional credits."
        assert platform.balance(org, engine) == ("-1.375", "1.375", "0", True)
        paused = platform.authorize(engine, org, "inference", project="Production")
        assert (paused["allowed"], paused["reason"]) == (False, "insufficient_credits")
        blocked = client.post(
            "/v1/holds",
            json={"organization": org, "operation": "training", "credits": "1"},
            headers=engine,
        )
        assert (blocked.status_code, blocked.json()["code"]) == (402, "insufficient_credits")

    # -- March 21st: Acme buys the Professional package and resumes by itself -------------------
    with clock.frozen_at(utc(2026, 3, 21, 9)):
        platform.grant(org, "5000", "purchase", "Professional package", cost_basis="0.009")
        assert platform.balance(org, engine) == ("4998.625", "0", "0", False)
        resumed = platform.authorize(engine, org, "inference", project="Production")
        assert (resumed["allowed"], resumed["reason"]) == (True, "ok")

    # -- March 22nd: one spike request was a failed health check; the operator corrects it ---------
    with clock.frozen_at(utc(2026, 3, 22, 9)):
        correction = platform.call(
            "POST",
            f"/v1/organizations/{org}/usage/spike-000/reverse",
            operator,
            json={"reason": "health check misrouted to a dedicated endpoint"},
        )
        assert correction["credits"] == "5.76"
        assert platform.balance(org, engine) == ("5004.385", "0", "0", False)
        again = client.post(
            f"/v1/organizations/{org}/usage/spike-000/reverse",
            json={"reason": "again"},
            headers=operator,
        )
        assert (again.status_code, again.json()["code"]) == (409, "already_reversed")

    # -- April 1st: the plan's remainder expires; Research's budget starts over -----------------------
    with clock.frozen_at(utc(2026, 4, 1, 10)):
        tick(db)
        assert platform.balance(org, engine) == ("4998.625", "0", "0", False)
        fresh = platform.authorize(engine, org, "training", project="Research", quantities=big)
        assert (fresh["allowed"], fresh["reason"]) == (True, "ok")

        # Globex saw none of it, and Acme's keys cannot reach Globex.
        assert platform.balance(globex["id"], globex_key) == ("100", "0", "0", False)
        assert platform.balance(org, sandbox)[0] == "49.9643"  # the sandbox kept its own
        stray = client.post(
            "/v1/usage",
            json={"id": "x", "organization": globex["id"], "operation": "inference"},
            headers=engine,
        )
        assert (stray.status_code, stray.json()["code"]) == (404, "unknown_organization")

    # The ledger proves itself, and every applied event was debited exactly once.
    with db.read() as s:
        debited = s.scalar(
            select(func.sum(UsageEvent.credits_micros)).where(
                UsageEvent.organization_id == org,
                UsageEvent.environment == "live",
                UsageEvent.reversed_at.is_(None),
            )
        )
        events = s.scalar(
            select(func.count()).where(
                UsageEvent.organization_id == org, UsageEvent.environment == "live"
            )
        )
    # 61.1 + 3 x 3.675 + 6.65 + 346.6 + 99 x 5.76 (the hundredth spike request was reversed)
    assert debited == 995_615_000
    assert events == 1 + 3000 + 1 + 1 + 100
    assert_clean(db)
