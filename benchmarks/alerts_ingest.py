"""What alert rules cost the batched ingest: the same ingest over HTTP with and without three
``credits_below`` rules per organization, two servers side by side in one run.

Two scratch databases of one kind (SQLite files or PostgreSQL databases), each with its own
``creditmeter serve`` process **with its background worker** (the production setting: the worker turns
the ``balance_crossing`` jobs of the write path into ``alert.triggered`` events a second later), set up
identically:

- a probe organization with plenty of credits, which sends one event to learn the price of an event;
- 100 organizations, each granted exactly the credits its share of the run will consume (one warm-up
  event plus its events in the plan, the same uniform random plan as ``ingest_http``) plus a margin of
  a tenth of that usage, so no organization runs dry;
- (B only) three ``credits_below`` rules per organization, created with the operator key after the
  grant: at the margin plus 3/4, 1/2 and 1/4 of its usage, so every line is crossed by the timed
  batches (none by the setup: each rule answers ``state: ok``);
- one warm-up batch of one event per organization; then each worker is left to finish the setup's
  ``balance_crossing`` jobs (the grants resume the organizations) before the clock starts.

Then N events per side (1,000,000; ``--quick`` 20,000) as ``POST /v1/usage/batch`` bodies of 5,000
events from 2 client threads over keep-alive connections (bodies encoded before the clock starts; the
same events, different ids on each side), cut into rounds of 50,000 events (``--quick`` 10,000) that
alternate between the servers A, B, B, A, A, B, … so drift on a shared machine falls on both alike.

Figure: the median events/s of B's rounds; baseline: the median of A's rounds (the totals, the best
rounds and the median of the ratios of the round pairs are printed too). Second figure, the same
target: events per CPU second of the server process (the worker included) plus, on PostgreSQL, the
backends of its database, B against A, over all rounds; CPU time moves less than wall time when other
work shares the machine. Target: at least 0.95x for both.

The 300 lines are crossed whatever N is, so what a crossing costs (in the write path, and the
worker's job) weighs on one event in 3,333 at full scale but on one in 67 with ``--quick``: the quick
run is a stress of crossings, not the issue's case.

Afterwards, on both sides: every event answered ``applied``,
``usage_events`` holds every event, the credits the responses reported equal the credits recorded and
the credits debited, ``creditmeter verify`` exits 0; on B, within 60 s, each organization has exactly
three ``alert.triggered`` events in ``notification_events`` and its three rules are ``triggered``; on
A, no alert event; on neither, a ``balance.depleted`` or ``organization.paused`` event.

``--profile DIR`` records both servers with ``py-spy`` (``pip install py-spy``) during the rounds, as
collapsed stacks: ``DIR/alerts_ingest-{kind}-{A,B}.folded``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import orjson

from benchmarks import common
from benchmarks.ingest_http import batch_bodies, plan, send, tally
from benchmarks.soak import busy_pids, cpu_seconds, spent
from creditmeter.kit.credits import format_credits, parse_credits

BATCH = 5_000
ORGS = 100
TARGET = 0.95
#: The three lines of each organization of B, as fractions of the credits it consumes in the run.
LINES = ((3, 4), (1, 2), (1, 4))
#: Seconds to wait for the worker to publish every alert.
ALERT_WAIT = 60.0


@contextlib.contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """``py-spy record`` of one process while the block runs, as collapsed stacks (one line per stack
    and its sample count: ``flamegraph.pl`` or speedscope draw them); nothing without ``out``."""
    if out is None:
        yield
        return
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen(
        [spy_bin, "record", "--rate", "100", "--format", "raw", "--pid", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


@dataclass
class Side:
    """One server and its organizations: A without alert rules, B with three each."""

    name: str
    url: str
    server: common.Server
    key: str = ""
    org_ids: list[str] = field(default_factory=list)
    price: int = 0
    granted: int = 0
    rates: list[float] = field(default_factory=list)
    #: CPU seconds of the server process (and, on PostgreSQL, its database's backends) per round.
    cpu: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    events: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    credits: int = 0

    def add(self, responses: list[bytes]) -> None:
        statuses, credits = tally(responses)
        for status, count in statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count
        self.credits += credits


def post_batch(side: Side, events: list[dict[str, object]]) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {side.key}"}
    r = httpx.post(
        f"{side.server.base}/v1/usage/batch", json={"events": events}, headers=headers, timeout=600
    )
    r.raise_for_status()
    results: list[dict[str, object]] = r.json()["results"]
    return results


def set_up(side: Side, counts: list[int], with_rules: bool) -> None:
    """Probe organization and price, the organizations with their exact credits, the rules (B), and
    the warm-up batch."""
    side.key = common.operator_key(side.url)
    probe = common.create_organizations(side.server.base, side.key, 1)[0]
    side.granted = parse_credits(common.PLENTY)
    probed = post_batch(
        side,
        [
            {
                "id": f"{side.name}-probe",
                "organization": probe,
                "operation": "inference",
                "quantities": common.INFERENCE,
            }
        ],
    )
    assert probed[0]["status"] == "applied", probed
    side.price = parse_credits(str(probed[0]["credits"]))
    side.add([orjson.dumps({"results": probed})])
    headers = {"Authorization": f"Bearer {side.key}"}
    with httpx.Client(base_url=side.server.base, headers=headers, timeout=60) as client:
        for i, count in enumerate(counts):
            usage = count * side.price
            margin = usage // 10
            r = client.post("/v1/organizations", json={"name": f"alerts bench org {i}"})
            r.raise_for_status()
            org_id = r.json()["id"]
            grant = usage + margin + side.price  # the warm-up event, its events, the margin
            client.post(
                f"/v1/organizations/{org_id}/grants",
                json={"credits": format_credits(grant), "source": "purchase", "reason": "bench"},
            ).raise_for_status()
            side.granted += grant
            side.org_ids.append(org_id)
            if not with_rules:
                continue
            for num, den in LINES:
                threshold = margin + usage * num // den
                a = client.post(
                    f"/v1/organizations/{org_id}/alerts",
                    json={"type": "credits_below", "threshold": format_credits(threshold)},
                )
                a.raise_for_status()
                if a.json()["state"] != "ok":
                    raise RuntimeError(f"a rule fired at its creation: {a.json()}")
    warm = post_batch(
        side,
        [
            {
                "id": f"{side.name}-warm-{i}",
                "organization": org,
                "operation": "inference",
                "quantities": common.INFERENCE,
            }
            for i, org in enumerate(side.org_ids)
        ],
    )
    side.add([orjson.dumps({"results": warm})])


def settle(side: Side) -> None:
    """Wait (up to a minute) until the worker has run every ``balance_crossing`` job of the setup
    (the grants resume the organizations), so its work does not fall into a timed round."""
    deadline = time.monotonic() + ALERT_WAIT
    pending = "SELECT count(*) FROM jobs WHERE kind = 'balance_crossing' AND state <> 'done'"
    while common.sql_scalar(side.url, pending) and time.monotonic() < deadline:
        time.sleep(0.5)


def check(side: Side, n: int, with_rules: bool) -> list[str]:
    """Problems found after the run (an empty list: all applied, credits exact, alerts as planned)."""
    problems = []
    total = n + len(side.org_ids) + 1  # the rounds, the warm-up batch, the probe
    if side.statuses != {"applied": total}:
        problems.append(f"{side.name}: statuses {side.statuses}, expected {total:,} applied")
    count = common.sql_scalar(side.url, "SELECT count(*) FROM usage_events")
    if count != total:
        problems.append(f"{side.name}: usage_events holds {count:,} rows, expected {total:,}")
    recorded = common.sql_scalar(side.url, "SELECT sum(credits_micros) FROM usage_events")
    available = common.sql_scalar(
        side.url,
        "SELECT sum(lots_micros - arrears_micros - held_micros) FROM balances "
        "WHERE environment = 'live'",
    )
    if not recorded == side.credits == side.granted - available == total * side.price:
        problems.append(
            f"{side.name}: credits: responses {side.credits}, events {recorded}, debited "
            f"{side.granted - available}, expected {total * side.price}"
        )
    expected = 3 * len(side.org_ids) if with_rules else 0
    triggered = "SELECT count(*) FROM notification_events WHERE type = 'alert.triggered'"
    exact = (
        "SELECT count(*) FROM (SELECT organization_id FROM notification_events "
        "WHERE type = 'alert.triggered' GROUP BY organization_id HAVING count(*) = 3) t"
    )
    deadline = time.monotonic() + ALERT_WAIT
    while common.sql_scalar(side.url, triggered) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.5)  # a late extra alert would show now
    found = common.sql_scalar(side.url, triggered)
    if found != expected:
        problems.append(f"{side.name}: {found} alert.triggered events, expected {expected}")
    if with_rules:
        per_org = common.sql_scalar(side.url, exact)
        rules = common.sql_scalar(
            side.url, "SELECT count(*) FROM alert_rules WHERE state = 'triggered'"
        )
        if per_org != len(side.org_ids) or rules != expected:
            problems.append(
                f"{side.name}: {per_org} organizations with exactly 3 alert.triggered events and "
                f"{rules} triggered rules, expected {len(side.org_ids)} and {expected}"
            )
    paused = common.sql_scalar(
        side.url,
        "SELECT count(*) FROM notification_events "
        "WHERE type IN ('balance.depleted', 'organization.paused')",
    )
    if paused:
        problems.append(f"{side.name}: {paused} depleted/paused events, expected none")
    ok, output = common.verify(side.url)
    if not ok:
        problems.append(f"{side.name}: creditmeter verify failed:\n{output[-2000:]}")
    return problems


def order(rounds: int) -> list[str]:
    """A, B, B, A, A, B, …: each side goes first as often as the other, so linear drift cancels."""
    return [name for r in range(rounds) for name in (("A", "B") if r % 2 == 0 else ("B", "A"))]


def run_one(
    kind: str, n: int, per_round: int, threads: int, profile: Path | None
) -> list[common.Result]:
    events = plan(n, ORGS)
    counts = [0] * ORGS
    for org in events:
        counts[org] += 1
    rounds = -(-n // per_round)
    with contextlib.ExitStack() as stack:
        sides: dict[str, Side] = {}
        for name in ("A", "B"):
            url = stack.enter_context(common.database(kind))
            server = stack.enter_context(common.serve(url, worker=True))
            sides[name] = Side(name, url, server)
        for name, side in sides.items():
            set_up(side, counts, with_rules=name == "B")
        for side in sides.values():
            settle(side)
        if sides["A"].price != sides["B"].price:
            raise RuntimeError(f"prices differ: {sides['A'].price} and {sides['B'].price}")
        for name, side in sides.items():
            out = profile / f"alerts_ingest-{kind}-{name}.folded" if profile else None
            stack.enter_context(profiled(side.server.pid, out))
        sequence = order(rounds)
        for step, name in enumerate(sequence):
            side = sides[name]
            r = step // 2
            first, last = r * per_round, min((r + 1) * per_round, n)
            bodies = batch_bodies(side.org_ids, events[first:last], BATCH, f"{name}{first}-")
            before = cpu_seconds(busy_pids(side.url, side.server.pid))
            elapsed, responses, _ = send(side.server.base, side.key, bodies, threads)
            side.cpu.append(spent(before, cpu_seconds(busy_pids(side.url, side.server.pid))))
            side.rates.append((last - first) / elapsed)
            side.sizes.append(last - first)
            side.seconds += elapsed
            side.events += last - first
            side.add(responses)
        problems = []
        for name, side in sides.items():
            problems += check(side, n, with_rules=name == "B")
    a, b = sides["A"], sides["B"]
    print(
        f"alerts on the ingest path, {kind}: {n:,} events per side over {ORGS} organizations "
        f"(B: 3 credits_below rules each, all crossed during the run), batches of {BATCH:,}, "
        f"{threads} client thread(s), 1 server worker process with its background worker; "
        f"{rounds} rounds of {per_round:,} events per side, order {''.join(sequence)}"
    )
    pairs = [rb / ra for ra, rb in zip(a.rates, b.rates, strict=True)]
    print("  A rounds (events/s): " + ", ".join(f"{x:,.0f}" for x in a.rates))
    print("  B rounds (events/s): " + ", ".join(f"{x:,.0f}" for x in b.rates))
    print("  B/A per round pair : " + ", ".join(f"{x:.3f}" for x in pairs))
    print(
        f"  totals: A {a.events / a.seconds:,.0f} events/s, B {b.events / b.seconds:,.0f} "
        f"events/s, ratio {a.seconds / b.seconds:.3f}x; best rounds: ratio "
        f"{max(b.rates) / max(a.rates):.3f}x; median of the pairs' ratios "
        f"{statistics.median(pairs):.3f}x"
    )
    what = "server process" + (" + its PostgreSQL backends" if kind == "postgresql" else "")
    print(
        f"  CPU ({what}) µs/event per round: A "
        + ", ".join(f"{c / e * 1e6:.1f}" for c, e in zip(a.cpu, a.sizes, strict=True))
        + "; B "
        + ", ".join(f"{c / e * 1e6:.1f}" for c, e in zip(b.cpu, b.sizes, strict=True))
    )
    note = (
        "checked: all applied, event counts, credits, 3 alert.triggered per organization of B "
        "and none on A, verify exit 0 on both"
        if not problems
        else "CORRECTNESS CHECK FAILED"
    )
    results = [
        common.report(
            common.Result(
                f"alerts_ingest {kind} (events/s)",
                statistics.median(b.rates),
                statistics.median(a.rates),
                "events/s",
                TARGET,
                note=note,
                valid=not problems,
            ),
            "without alert rules (median round)",
            "3 credits_below rules (median round)",
        ),
        common.report(
            common.Result(
                f"alerts_ingest {kind} CPU/event (x)",
                b.events / sum(b.cpu) / 1000,
                a.events / sum(a.cpu) / 1000,
                "ev/CPU ms",
                TARGET,
                note=f"{what}: A {sum(a.cpu) / a.events * 1e6:.1f} µs/event, "
                f"B {sum(b.cpu) / b.events * 1e6:.1f} µs/event",
                valid=not problems,
            ),
            "events per CPU ms, without rules",
            "events per CPU ms, 3 rules",
        ),
    ]
    for p in problems:
        print(f"  !! {p}")
    return results


def main(argv: list[str] | None = None) -> list[common.Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=None, help="per side; default 1,000,000")
    parser.add_argument("--quick", action="store_true", help="20,000 events per side")
    parser.add_argument("--round", type=int, default=None, help="events per round (50,000)")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    parser.add_argument("--threads", type=int, default=2, help="client threads")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy flame graphs here")
    args = parser.parse_args(argv)
    n = args.events or (20_000 if args.quick else 1_000_000)
    per_round = args.round or (10_000 if args.quick else 50_000)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = []
    for kind in common.parse_databases(args.database):
        results += run_one(kind, n, per_round, args.threads, args.profile)
    return results


if __name__ == "__main__":
    main()
