"""Run every benchmark (``make bench``); each prints its figure, a baseline measured in the same run, the
ratio, the target and PASS or MISS, and a summary table closes the run.

``--quick`` (``make bench QUICK=1``) runs every benchmark at a small scale in a few minutes; without it
the scales are the full ones (1M events per ingest run, and per side of the alert-rules comparison;
10,000 organizations and 1M events for the cycle close; the soak sends 10M events over HTTP to each
database and compares its last 1M with its first 1M, and its peak RSS at 10M with that at 1M).
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    alerts_ingest,
    common,
    cycle_close,
    gate_http,
    hot_org,
    ingest_http,
    ledger_debit,
    soak,
)

BENCHMARKS = (
    "ledger_debit",
    "ingest_http",
    "gate_http",
    "hot_org",
    "alerts_ingest",
    "soak",
    "cycle_close",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scales, a few minutes")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    parser.add_argument("--database", default="both", help="sqlite, postgresql or both")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; know {BENCHMARKS}")
    quick = ["--quick"] if args.quick else []
    db = ["--database", args.database]
    started = time.perf_counter()
    print(
        f"creditmeter benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{'quick' if args.quick else 'full'} scale; {common.describe_machine()}"
    )
    for name in chosen:
        print()
        if name == "ledger_debit":
            ledger_debit.main(["--debits", "10000"] if args.quick else [])
        elif name == "ingest_http":
            ingest_http.main(quick + db)
        elif name == "gate_http":
            gate_http.main(quick + db)
        elif name == "hot_org":
            hot_org.main(quick + db)
        elif name == "alerts_ingest":
            alerts_ingest.main(quick + db)
        elif name == "soak":
            soak.main(quick + db)
        elif name == "cycle_close":
            cycle_close.main(quick + db)
    print(f"\nsummary ({time.perf_counter() - started:,.0f} s; {common.describe_machine()}):")
    for result in common.RESULTS:
        print("  " + result.summary())
    missed = [r for r in common.RESULTS if not r.passed]
    print(f"  {len(common.RESULTS) - len(missed)} met, {len(missed)} missed")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
