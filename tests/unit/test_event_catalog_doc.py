"""docs/events.md is the catalog as the code defines it (regenerate with
``python -m creditmeter.notify.catalog_doc docs/events.md``)."""

from __future__ import annotations

from pathlib import Path

from creditmeter.notify import catalog, catalog_doc

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_the_event_catalog_document_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == catalog_doc.render(), (
        "docs/events.md is out of date: run python -m creditmeter.notify.catalog_doc docs/events.md"
    )


def test_every_issue_event_type_is_in_the_catalog() -> None:
    promised = {
        "alert.triggered", "alert.resolved", "balance.depleted", "organization.paused",
        "organization.resumed", "credits.granted", "credits.expiring", "credits.expired",
        "purchase.succeeded", "purchase.failed", "invoice.issued", "invoice.paid",
        "invoice.past_due", "payment.failed", "subscription.updated", "auto_top_up.failed",
        "organization.suspended",
    }  # fmt: skip
    assert promised <= set(catalog.CATALOG)
    for event_type in catalog.CATALOG.values():
        assert event_type.version >= 1
        assert event_type.description


def test_every_catalog_type_has_a_publisher_in_the_code() -> None:
    src = Path(catalog.__file__).resolve().parents[1]
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for p in src.rglob("*.py")
        if p.name not in {"catalog.py", "catalog_doc.py"}
    )
    unpublished = [name for name in catalog.CATALOG if f'"{name}"' not in code]
    assert unpublished == []
