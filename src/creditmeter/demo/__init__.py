"""Demo data for a newcomer: ``creditmeter serve --demo`` (``make serve DEMO=1``) seeds three
organizations that show the whole product at once, and makes fresh keys to explore them with.

- **Acme AI** (``demo-acme``, live): projects, members, credits from every source, two weeks of metered
  usage, a hold and a project budget (``live.py``), alert rules (``alerts.py``).
- **Globex Research** (``demo-globex``, live): paused after a training run used more than it had.
- **Orbital Labs** (``demo-orbital``, test): four months billed on a test clock through the real
  services: a subscription, monthly closes, invoices with PDFs, payments, a package bought with the
  sandbox's test card, and a last invoice past due after the card was declined (``billing.py``).

Seeding is idempotent: organizations that exist are kept (an interrupted Orbital story is finished);
every run prints new keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from creditmeter.billing.payments.sandbox import SandboxProvider
from creditmeter.billing.plans import load_catalog
from creditmeter.config import default_database_url
from creditmeter.demo.alerts import seed_alerts
from creditmeter.demo.billing import ORBITAL, seed_orbital
from creditmeter.demo.live import ACME, GLOBEX, seed_live
from creditmeter.kit.db import Database
from creditmeter.orgs import service as orgs
from creditmeter.orgs.service import Environment, Scope
from creditmeter.pricing.domain import RateCard

__all__ = ["ACME", "GLOBEX", "ORBITAL", "DemoKeys", "banner", "seed"]


@dataclass(frozen=True)
class DemoKeys:
    operator_key: str
    acme_id: str
    acme_admin_key: str
    globex_id: str
    orbital_id: str
    #: An ``org:admin`` key of Orbital Labs' test environment (where its billing story lives).
    orbital_admin_key: str
    orbital_clock_time: datetime
    database_url: str


def seed(
    db: Database, now: datetime, rate_card: RateCard, plans_path: str | None = None
) -> DemoKeys:
    """Create the demo organizations if missing (finishing Orbital Labs' story if a run was cut
    short), and fresh keys to explore them with. Bills Orbital Labs with the sandbox processor."""
    with db.write() as session:
        acme, globex = seed_live(session, now, rate_card)
        seed_alerts(session, acme, now)
    orbital = seed_orbital(db, now, rate_card, load_catalog(plans_path), SandboxProvider(db))
    with db.write() as session:
        _, operator_key = orgs.create_api_key(
            session, None, "demo operator", [Scope.OPERATOR], Environment.LIVE, now
        )
        _, acme_key = orgs.create_api_key(
            session, acme, "demo admin", [Scope.ORG_ADMIN], Environment.LIVE, now
        )
        _, orbital_key = orgs.create_api_key(
            session, orbital.organization_id, "demo admin", [Scope.ORG_ADMIN], Environment.TEST, now
        )
    return DemoKeys(
        operator_key,
        acme,
        acme_key,
        globex,
        orbital.organization_id,
        orbital_key,
        orbital.clock_time,
        db.url,
    )


def banner(keys: DemoKeys, base_url: str) -> str:
    """What ``serve --demo`` prints: every line fits an 80-column terminal, the keys as ``export``
    lines to paste into another shell, and what to try first."""
    lines = [
        "creditmeter demo: three organizations (kept between runs), new keys each run",
        "",
        "  demo-acme     Acme AI, live: two weeks of usage, a hold, a project budget,",
        "                alert rules (their alerts: notification-events, e-mails)",
        "  demo-globex   Globex Research, live: paused, it used more than it had",
        "  demo-orbital  Orbital Labs, test: billed for four months on a test clock",
        f"                (now at {keys.orbital_clock_time:%Y-%m-%d}): paid invoices with PDFs, a package",
        "                bought with a test card, the last invoice past due",
        "",
        "In another terminal (an operator key, Acme AI's admin, Orbital Labs' admin):",
        f"  export OP={keys.operator_key}",
        f"  export ACME={keys.acme_admin_key}",
        f"  export ORBITAL={keys.orbital_admin_key}",
    ]
    if keys.database_url != default_database_url():
        lines.append(
            "  # and for the CLI, export the same CREDITMETER_DATABASE_URL as the server's"
        )
    lines += [
        "Then:",
        '  curl -H "Authorization: Bearer $ACME" \\',
        f"    {base_url}/v1/organizations/{ACME}/balance",
        '  curl -H "Authorization: Bearer $ORBITAL" \\',
        f"    {base_url}/v1/organizations/{ORBITAL}/invoices",
        '  curl -H "Authorization: Bearer $ACME" \\',
        f"    {base_url}/v1/organizations/{ACME}/notification-events",
        f"  .venv/bin/creditmeter balance {ACME}",
        f"API docs: {base_url}/docs",
    ]
    return "\n".join(lines)
