"""The batch answer of ``POST /v1/usage/batch`` (and of a CloudEvents batch): validate every event on its
own, price and fingerprint the valid ones before the transaction, apply them in one, and answer one
result per event in request order."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from creditmeter.api.coalesce import by_clock
from creditmeter.api.group_commit import GroupCommit
from creditmeter.api.jsonio import is_text
from creditmeter.api.problems import problem_body, validation_errors
from creditmeter.api.schemas_metering import parse_events
from creditmeter.errors import CreditmeterError
from creditmeter.kit.credits import format_credits
from creditmeter.kit.db import Database
from creditmeter.metering.domain import EventInput
from creditmeter.metering.ingest import IngestContext, apply, prepare, resolve

log = logging.getLogger(__name__)

Row = tuple[str, str, int | None, Any]


def _write(db: Database, ctx: IngestContext, valid: list[EventInput]) -> list[Row]:
    """Ingest valid events in one write transaction (one per test clock's organization among an
    operator key's events); ``(id, status, credits_micros, error)`` per event, in order."""
    groups = by_clock(db, ctx, valid)  # one group, unless an operator key sends clocked events
    if len(groups) == 1:
        return _write_group(db, ctx, valid)
    # One transaction per clock: once one has committed, a failure of another must not turn the
    # whole answer into an error (the committed events would look unwritten). Its events are
    # answered with the failure, each, and the batch can be sent again (the rest are duplicates).
    rows: list[Any] = [None] * len(valid)
    for group_ctx, indexes in groups:
        events = [valid[i] for i in indexes]
        try:
            written = _write_group(db, group_ctx, events)
        except Exception:
            log.exception("a usage batch's transaction for one test clock failed")
            written = [(e.id, "rejected", None, _NOT_WRITTEN) for e in events]
        for i, row in zip(indexes, written, strict=True):
            rows[i] = row
    return rows


_NOT_WRITTEN = CreditmeterError(
    "this event was not written: the transaction failed and was rolled back; send it again",
    code="internal_error",
    status_code=500,
)


def _write_group(db: Database, ctx: IngestContext, events: list[EventInput]) -> list[Row]:
    prepared = prepare(ctx, events)  # pure: outside the transaction and every lock
    with db.write() as session:
        resolve(session, ctx, prepared)
        applied = apply(session, ctx, prepared)
    return applied.summary()


def _write_merged(
    works: Sequence[tuple[Database, IngestContext, list[EventInput]]],
) -> list[list[Row]]:
    """Several batches of one scope in one transaction: their events together (in arrival order, so
    an id sent twice is applied once and answered as a duplicate after, as one after the other
    would be), checked against the latest of their clocks; the rows cut back per batch."""
    db = works[0][0]
    ctx = max((w[1] for w in works), key=lambda c: c.now)
    merged = [e for w in works for e in w[2]]
    rows = _write(db, ctx, merged)
    out, start = [], 0
    for w in works:
        out.append(rows[start : start + len(w[2])])
        start += len(w[2])
    return out


_GROUP: GroupCommit[tuple[Database, IngestContext, list[EventInput]], list[Row]] = GroupCommit(
    _write_merged
)


def apply_batch(db: Database, ctx: IngestContext, raw_events: list[Any]) -> list[Any]:
    """Validate each raw event on its own, ingest the valid ones in one transaction (shared with the
    batches of the same caller that arrive meanwhile, see ``group_commit``), and answer one result
    per event in request order."""
    parsed = parse_events(raw_events)
    valid: list[EventInput] = [p for p in parsed if not isinstance(p, ValidationError)]
    scope = (db, ctx.environment, ctx.caller_organization_id)
    rows = _GROUP.run(scope, (db, ctx, valid), len(valid)) if valid else []
    summary = iter(rows)
    credits: dict[int, str] = {}
    out: list[Any] = []
    for raw, p in zip(raw_events, parsed, strict=True):
        if isinstance(p, ValidationError):
            out.append(_invalid(raw, p))
            continue
        event_id, status, micros, error = next(summary)
        item: dict[str, Any] = {"id": event_id, "status": status}
        if micros is not None:
            text = credits.get(micros)
            if text is None:
                text = credits[micros] = format_credits(micros)
            item["credits"] = text
        if error is not None:
            e = error
            item["error"] = problem_body(e.status_code, e.code, e.detail, errors=e.errors or None)
        out.append(item)
    return out


def echoed_id(raw: Any) -> str | None:
    """The id a rejected raw event is answered with: its ``id`` when that is text (not, say, a
    number or a string holding a lone surrogate); else null (results are in request order)."""
    event_id = raw.get("id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) and is_text(event_id) else None


def _invalid(raw: Any, exc: ValidationError) -> dict[str, Any]:
    errors = validation_errors(exc.errors())
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return {
        "id": echoed_id(raw),
        "status": "rejected",
        "error": problem_body(422, "validation_failed", detail, errors=errors),
    }
