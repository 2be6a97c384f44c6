"""Re-prove the ledger from the journal: every transaction sums to zero and names one organization;
every lot's remainder and every materialized balance equals the sum of its postings.

The checks run as aggregate SQL over chunks of organizations, so a large database is verified in a few
queries per chunk, and a progress callback can report each chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from creditmeter.kit.credits import format_credits
from creditmeter.ledger.domain import Account
from creditmeter.ledger.models import Balance, JournalTransaction, Lot, Posting
from creditmeter.orgs.models import Organization

CHUNK = 500


@dataclass(frozen=True)
class Mismatch:
    check: str
    organization_id: str
    subject: str
    expected: str
    actual: str

    def describe(self) -> str:
        return (
            f"{self.check}: {self.subject} of {self.organization_id}: expected {self.expected}, "
            f"found {self.actual}"
        )


Check = Callable[[Session, list[str]], list["Mismatch"]]


def verify(
    session: Session,
    progress: Callable[[int, int], None] | None = None,
    extra_checks: Sequence[Check] = (),
) -> list[Mismatch]:
    """Every mismatch in the ledger (an empty list means it is clean). ``extra_checks`` run on each
    chunk of organizations too (metering adds its own: events against the journal)."""
    org_ids = list(session.scalars(select(Organization.id).order_by(Organization.id)))
    mismatches: list[Mismatch] = []
    done = 0
    for start in range(0, len(org_ids), CHUNK):
        chunk = org_ids[start : start + CHUNK]
        mismatches += _unbalanced(session, chunk)
        mismatches += _cross_organization(session, chunk)
        mismatches += _lots(session, chunk)
        mismatches += _balances(session, chunk)
        for check in extra_checks:
            mismatches += check(session, chunk)
        done += len(chunk)
        if progress:
            progress(done, len(org_ids))
    return mismatches


def _unbalanced(session: Session, orgs: list[str]) -> list[Mismatch]:
    total = func.coalesce(func.sum(Posting.amount_micros), 0)
    rows = session.execute(
        select(
            JournalTransaction.id,
            JournalTransaction.organization_id,
            total.label("total"),
            func.count(Posting.id).label("n"),
        )
        .outerjoin(Posting, Posting.transaction_id == JournalTransaction.id)
        .where(JournalTransaction.organization_id.in_(orgs))
        .group_by(JournalTransaction.id, JournalTransaction.organization_id)
        .having(or_(total != 0, func.count(Posting.id) == 0))
    ).all()
    return [
        Mismatch(
            "zero-sum",
            r.organization_id,
            f"journal transaction txn_{r.id}",
            "postings summing to 0",
            f"{r.n} postings summing to {format_credits(int(r.total))}",
        )
        for r in rows
    ]


def _cross_organization(session: Session, orgs: list[str]) -> list[Mismatch]:
    rows = session.execute(
        select(
            JournalTransaction.id,
            JournalTransaction.organization_id,
            Posting.organization_id.label("posting_org"),
            Lot.organization_id.label("lot_org"),
        )
        .join(Posting, Posting.transaction_id == JournalTransaction.id)
        .outerjoin(Lot, Lot.id == Posting.lot_id)
        .where(
            JournalTransaction.organization_id.in_(orgs),
            or_(
                Posting.organization_id != JournalTransaction.organization_id,
                Posting.environment != JournalTransaction.environment,
                and_(
                    Posting.lot_id.is_not(None),
                    or_(
                        Lot.organization_id != JournalTransaction.organization_id,
                        Lot.environment != JournalTransaction.environment,
                    ),
                ),
            ),
        )
    ).all()
    return [
        Mismatch(
            "single-organization",
            r.organization_id,
            f"journal transaction txn_{r.id}",
            f"postings of {r.organization_id} only",
            f"a posting for {r.lot_org or r.posting_org}",
        )
        for r in rows
    ]


def _lots(session: Session, orgs: list[str]) -> list[Mismatch]:
    journal = func.coalesce(func.sum(Posting.amount_micros), 0)
    rows = session.execute(
        select(
            Lot.id,
            Lot.organization_id,
            Lot.remaining_micros,
            Lot.amount_micros,
            journal.label("journal"),
        )
        .outerjoin(Posting, Posting.lot_id == Lot.id)
        .where(Lot.organization_id.in_(orgs))
        .group_by(Lot.id, Lot.organization_id, Lot.remaining_micros, Lot.amount_micros)
        .having(
            or_(
                journal != Lot.remaining_micros,
                Lot.remaining_micros < 0,
                Lot.remaining_micros > Lot.amount_micros,
            )
        )
    ).all()
    out = []
    for r in rows:
        if int(r.journal) != r.remaining_micros:
            out.append(
                Mismatch(
                    "lot-remaining",
                    r.organization_id,
                    f"lot {r.id}",
                    format_credits(int(r.journal)),
                    format_credits(r.remaining_micros),
                )
            )
        else:
            out.append(
                Mismatch(
                    "lot-bounds",
                    r.organization_id,
                    f"lot {r.id}",
                    f"between 0 and {format_credits(r.amount_micros)}",
                    format_credits(r.remaining_micros),
                )
            )
    return out


def _balances(session: Session, orgs: list[str]) -> list[Mismatch]:
    sums: dict[tuple[str, str, str], int] = {}
    for r in session.execute(
        select(
            Posting.organization_id,
            Posting.environment,
            Posting.account,
            func.sum(Posting.amount_micros),
        )
        .where(
            Posting.organization_id.in_(orgs),
            Posting.account.in_([Account.LOT, Account.ARREARS, Account.HELD]),
        )
        .group_by(Posting.organization_id, Posting.environment, Posting.account)
    ):
        sums[(r[0], r[1], r[2])] = int(r[3])
    out = []
    for b in session.execute(select(Balance).where(Balance.organization_id.in_(orgs))).scalars():
        key = (b.organization_id, b.environment)
        expected = {
            "lots": sums.get((*key, Account.LOT), 0),
            "arrears": -sums.get((*key, Account.ARREARS), 0),
            "held": sums.get((*key, Account.HELD), 0),
        }
        actual = {"lots": b.lots_micros, "arrears": b.arrears_micros, "held": b.held_micros}
        for name, want in expected.items():
            if actual[name] != want:
                out.append(
                    Mismatch(
                        "balance",
                        b.organization_id,
                        f"{b.environment} {name}",
                        format_credits(want),
                        format_credits(actual[name]),
                    )
                )
    return out
