"""Run every benchmark; each prints its figure and its ratio against a baseline from the same run."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import ledger_debit


def main() -> None:
    ledger_debit.main(sys.argv[1:])


if __name__ == "__main__":
    main()
