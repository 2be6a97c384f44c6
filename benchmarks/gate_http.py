"""The gate and single-event ingest under load: ``POST /v1/authorize`` and ``POST /v1/usage`` at 64
concurrent connections, versus a trivial endpoint of the same app (``GET /healthz``) served by the same
server process(es) with the same worker count, in the same run.

Load generator: ``wrk`` (``apt-get install -y wrk``; ``make bench`` installs it when missing) with small
Lua scripts for the JSON bodies and the ``Authorization`` header; single-event usage gets a unique event
id per request from a per-thread counter. Without wrk the script falls back to a Python asyncio/httpx
load generator and says so: that one spends CPU of its own on the same two cores, so its figures are
lower and only its ratios are meaningful.

Targets: authorize at least 0.8x the trivial endpoint's requests/s with p99 at most 5 ms;
single-event usage at least 0.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from benchmarks import common

CONNECTIONS = 64
ORGS = 100
P99_TARGET_MS = 5.0

LUA_HEADER = """
local orgs = {%(orgs)s}
local counter = 1
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
"""

AUTHORIZE_LUA = """
function request()
  n = n + 1
  local org = orgs[math.fmod(n, #orgs) + 1]
  return wrk.format(nil, nil, nil, '{"organization":"' .. org ..
    '","operation":"inference","quantities":{"input_tokens":"1200","output_tokens":"300"}}')
end
"""

USAGE_LUA = """
function request()
  n = n + 1
  local org = orgs[math.fmod(n, #orgs) + 1]
  return wrk.format(nil, nil, nil, '{"id":"%(prefix)s-' .. tid .. '-' .. n ..
    '","organization":"' .. org ..
    '","operation":"inference","quantities":{"input_tokens":"1200","output_tokens":"300"}}')
end
"""

STATUS_LUA = """
local bad = 0
function response(status, headers, body)
  if status >= 300 then bad = bad + 1 end
end
"""


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p99_ms: float
    p50_ms: float
    errors: int
    requests: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: str | None, seconds: int, threads: int) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "--latency",
        ]
        if script is not None:
            lua.write(script)
            lua.flush()
            cmd += ["-s", lua.name]
        out = subprocess.run(
            [*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(x) for x in re.findall(r"\d+", socket_errors.group(1)))
    return Load(rps, p99, p50, errors, total)


async def _python_load(
    url: str, method: str, body: object, headers: dict[str, str], seconds: int, unique: bool
) -> Load:
    """The fallback: CONNECTIONS asyncio tasks, each with a request always in flight."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:

        async def worker(w: int) -> None:
            nonlocal errors
            i = 0
            while time.perf_counter() < deadline:
                i += 1
                payload = body
                if unique and isinstance(body, dict):
                    payload = {**body, "id": f"{body['id']}-{w}-{i}"}
                t0 = time.perf_counter()
                r = await client.request(method, url, json=payload)
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += r.status_code >= 300

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(CONNECTIONS)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return Load(n / elapsed, latencies[int(n * 0.99) - 1], latencies[n // 2], errors, n)


@dataclass
class Target:
    name: str
    path: str
    method: str
    lua: str | None
    body: dict[str, object] | None
    unique: bool = False


def targets(key: str, org_ids: list[str], prefix: str) -> dict[str, Target]:
    header = LUA_HEADER % {"orgs": ", ".join(f'"{o}"' for o in org_ids), "key": key}
    body = {"organization": org_ids[0], "operation": "inference", "quantities": common.INFERENCE}
    return {
        "healthz": Target("GET /healthz", "/healthz", "GET", None, None),
        "authorize": Target(
            "POST /v1/authorize", "/v1/authorize", "POST", header + AUTHORIZE_LUA, body
        ),
        "usage": Target(
            "POST /v1/usage",
            "/v1/usage",
            "POST",
            header + USAGE_LUA % {"prefix": prefix},
            {"id": prefix, **body},
            unique=True,
        ),
    }


def measure(base: str, key: str, t: Target, seconds: int, wrk_threads: int) -> Load:
    if shutil.which("wrk"):
        return run_wrk(base + t.path, t.lua, seconds, wrk_threads)
    headers = {"Authorization": f"Bearer {key}"}
    return asyncio.run(_python_load(base + t.path, t.method, t.body, headers, seconds, t.unique))


def _line(name: str, load: Load) -> None:
    print(
        f"  {name:<20} {load.requests_per_s:10,.0f} req/s   p50 {load.p50_ms:7.2f} ms   "
        f"p99 {load.p99_ms:7.2f} ms   ({load.requests:,} requests, {load.errors} errors)"
    )


def run_one(kind: str, seconds: int, workers: int, wrk_threads: int) -> list[common.Result]:
    generator = (
        f"wrk, {wrk_threads} thread(s)"
        if shutil.which("wrk")
        else "FALLBACK Python asyncio/httpx load generator (wrk is not installed)"
    )
    print(
        f"gate and single-event ingest, {kind}: {CONNECTIONS} connections, {seconds} s each, "
        f"{workers} server worker process(es), load from {generator}"
    )
    with common.database(kind) as url, common.serve(url, workers=workers) as server:
        key = common.operator_key(url)
        org_ids = common.create_organizations(server.base, key, ORGS)
        ts = targets(key, org_ids, f"g{int(time.time())}")
        measure(server.base, key, ts["healthz"], 2, wrk_threads)  # warm up every worker
        measure(server.base, key, ts["authorize"], 2, wrk_threads)
        loads: dict[str, Load] = {}
        for name in ("healthz", "authorize", "healthz2", "usage"):
            t = ts[name.rstrip("2")]
            loads[name] = measure(server.base, key, t, seconds, wrk_threads)
            _line(t.name if name != "healthz2" else "GET /healthz again", loads[name])
        events = common.sql_scalar(url, "SELECT count(*) FROM usage_events")
        ok, output = common.verify(url)
    healthz = Load(
        (loads["healthz"].requests_per_s + loads["healthz2"].requests_per_s) / 2,
        (loads["healthz"].p99_ms + loads["healthz2"].p99_ms) / 2,
        (loads["healthz"].p50_ms + loads["healthz2"].p50_ms) / 2,
        0,
        0,
    )
    errors = loads["authorize"].errors + loads["usage"].errors
    print(
        f"  trivial endpoint = mean of the two /healthz runs; {events:,} usage events recorded "
        f"({loads['usage'].requests:,} requests sent), verify {'exit 0' if ok else 'FAILED'}"
    )
    if errors:
        print(f"  !! {errors} error responses or timeouts (over 10 s)")
    if not ok:
        print(f"  !! creditmeter verify failed: {output[-2000:]}")
    return [
        common.report(
            common.Result(
                f"gate_http {kind} authorize (req/s)",
                loads["authorize"].requests_per_s,
                healthz.requests_per_s,
                "req/s",
                0.8,
            ),
            "GET /healthz (same app)",
            "POST /v1/authorize",
        ),
        common.report(
            common.Result(
                f"gate_http {kind} authorize p99 (ms)",
                loads["authorize"].p99_ms,
                P99_TARGET_MS,
                "ms",
                1.0,
                lower_is_better=True,
                note=f"bound: p99 <= {P99_TARGET_MS:g} ms; /healthz p99 at the same load "
                f"{healthz.p99_ms:.2f} ms",
            ),
            "bound",
            "POST /v1/authorize p99",
        ),
        common.report(
            common.Result(
                f"gate_http {kind} single usage (req/s)",
                loads["usage"].requests_per_s,
                healthz.requests_per_s,
                "req/s",
                0.5,
                valid=ok and events >= loads["usage"].requests - loads["usage"].errors,
            ),
            "GET /healthz (same app)",
            "POST /v1/usage (one event)",
        ),
    ]


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=None, help="per endpoint; default 20")
    parser.add_argument("--quick", action="store_true", help="8 s per endpoint")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--wrk-threads", type=int, default=1)
    args = parser.parse_args(argv)
    seconds = args.seconds or (8 if args.quick else 20)
    results = []
    for kind in common.parse_databases(args.database):
        results += run_one(kind, seconds, args.workers, args.wrk_threads)
    return results


if __name__ == "__main__":
    main()
