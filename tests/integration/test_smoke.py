from creditmeter.kit.db import Database
from creditmeter.ledger import service as ledger
from creditmeter.ledger.domain import LotSource
from creditmeter.ledger.verify import verify
from tests.conftest import utc


def test_grant_debit_verify(db: Database, make_org) -> None:
    org = make_org()
    now = utc(2026, 1, 15)
    with db.write() as s:
        ledger.grant(
            s, org, "live", ledger.GrantRequest(10_000_000, LotSource.PLAN, "jan", now, None), now
        )
        ledger.debit(s, org, "live", 15_000_000, "inference", "x", now)
    with db.read() as s:
        b = ledger.get_balance(s, org, "live", now)
        assert (b.available_micros, b.arrears_micros) == (-5_000_000, 5_000_000)
        assert verify(s) == []
