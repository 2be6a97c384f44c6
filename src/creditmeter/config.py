"""Settings, read from the environment once per process.

Every setting has a default that works out of the box: the database is an embedded SQLite file
under ``./var/`` so ``creditmeter serve`` needs nothing else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SQLITE_PATH = Path("var") / "creditmeter.db"


def default_database_url() -> str:
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=default_database_url)
    currency: str = "USD"
    #: Seconds between background sweeps (lot expiry) of the in-process worker.
    worker_interval_seconds: float = 60.0
    #: ``last_used_at`` of an API key is written at most this often (seconds), keeping reads cheap.
    key_touch_interval_seconds: float = 60.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get("CREDITMETER_DATABASE_URL") or default_database_url(),
            currency=os.environ.get("CREDITMETER_CURRENCY", "USD").upper(),
            worker_interval_seconds=float(os.environ.get("CREDITMETER_WORKER_INTERVAL", "60")),
            key_touch_interval_seconds=float(
                os.environ.get("CREDITMETER_KEY_TOUCH_INTERVAL", "60")
            ),
        )
