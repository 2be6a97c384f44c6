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
    #: Usage events older than this (by ``occurred_at``) are rejected.
    late_window_days: int = 35
    #: Usage events further in the future than this are rejected (clock skew allowance).
    future_skew_seconds: int = 300
    #: The operator's rate card (TOML); None means the default that ships with the package.
    rate_card_path: str | None = None
    #: The operator's plans, packages and billing time zone (TOML); None means the built-in default.
    plans_path: str | None = None
    #: The payment processor: ``sandbox`` (test cards, its own tables) or ``stripe``.
    payment_provider: str = "sandbox"
    #: Stripe's secret key (``sk_test_…``/``sk_live_…``), for ``payment_provider = "stripe"``.
    stripe_secret_key: str | None = field(default=None, repr=False)
    #: Seconds between the worker's runs of notification jobs (alerts, webhooks, e-mails).
    notify_interval_seconds: float = 1.0
    #: How long a worker holds a notification job (a webhook request, an e-mail) before another
    #: worker may take it: longer than the webhook timeout. After a crash, jobs resume after it.
    notify_lease_seconds: float = 60.0
    #: Webhook requests time out after this many seconds.
    webhook_timeout_seconds: float = 15.0
    #: Whether webhook URLs may point at loopback, private or link-local addresses (one-box setups
    #: and tests); refused by default.
    webhook_allow_private: bool = False
    #: The SMTP server for e-mail; None: messages are kept in the ``emails`` table (status ``held``).
    smtp_host: str | None = None
    smtp_port: int = 587
    #: ``starttls`` (default), ``ssl`` (implicit TLS, port 465) or ``none``.
    smtp_tls: str = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    email_from: str = "creditmeter <notifications@localhost>"
    #: The address members reach the service at, for links in e-mails (unsubscribe, invoices).
    public_url: str = "http://127.0.0.1:8000"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get("CREDITMETER_DATABASE_URL") or default_database_url(),
            currency=os.environ.get("CREDITMETER_CURRENCY", "USD").upper(),
            worker_interval_seconds=float(os.environ.get("CREDITMETER_WORKER_INTERVAL", "60")),
            key_touch_interval_seconds=float(
                os.environ.get("CREDITMETER_KEY_TOUCH_INTERVAL", "60")
            ),
            late_window_days=int(os.environ.get("CREDITMETER_LATE_WINDOW_DAYS", "35")),
            future_skew_seconds=int(os.environ.get("CREDITMETER_FUTURE_SKEW_SECONDS", "300")),
            rate_card_path=os.environ.get("CREDITMETER_RATE_CARD") or None,
            plans_path=os.environ.get("CREDITMETER_PLANS") or None,
            payment_provider=(
                os.environ.get("CREDITMETER_PAYMENT_PROVIDER", "sandbox").strip().lower()
                or "sandbox"
            ),
            stripe_secret_key=os.environ.get("CREDITMETER_STRIPE_SECRET_KEY") or None,
            notify_interval_seconds=float(os.environ.get("CREDITMETER_NOTIFY_INTERVAL", "1")),
            notify_lease_seconds=float(os.environ.get("CREDITMETER_NOTIFY_LEASE_SECONDS", "60")),
            webhook_timeout_seconds=float(
                os.environ.get("CREDITMETER_WEBHOOK_TIMEOUT_SECONDS", "15")
            ),
            webhook_allow_private=_flag(os.environ.get("CREDITMETER_WEBHOOK_ALLOW_PRIVATE")),
            smtp_host=os.environ.get("CREDITMETER_SMTP_HOST") or None,
            smtp_port=int(os.environ.get("CREDITMETER_SMTP_PORT", "587")),
            smtp_tls=(os.environ.get("CREDITMETER_SMTP_TLS", "starttls").strip().lower()),
            smtp_username=os.environ.get("CREDITMETER_SMTP_USERNAME") or None,
            smtp_password=os.environ.get("CREDITMETER_SMTP_PASSWORD") or None,
            email_from=os.environ.get("CREDITMETER_EMAIL_FROM")
            or "creditmeter <notifications@localhost>",
            public_url=(os.environ.get("CREDITMETER_PUBLIC_URL") or "http://127.0.0.1:8000").rstrip(
                "/"
            ),
        )


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
