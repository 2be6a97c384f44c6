"""Billing: plans and packages, subscriptions, the monthly cycle close, invoices, payments and collection.

Design note.

- **Configuration**: ``default_plans.toml`` ships here and is documented line by line;
  ``CREDITMETER_PLANS`` names another file. It holds the billing time zone, the plans (monthly fee in
  minor units, allocation, rollover, price per purchased credit, expiry of purchased credits, overage
  policy) and the credit packages (fixed amounts, plus bounds of a custom amount). ``plans.py``
  validates a file whole with pydantic and reports every problem at once (``PlansError``).
- **Pure rules** (``domain.py``, no I/O): calendar-month periods in the billing time zone as UTC
  instants, the expiry instant of a plan lot (end of cycle N + rollover) and of purchased credits (+N
  months, day clamped), proration by the time left in the cycle (rounded once, half to even), the
  price of N credits, and whether a plan change is an upgrade (at once) or not (next cycle).
- **Subscriptions** (``subscriptions.py``, ``models.py``): one per organization and environment, with
  a snapshot of its terms and the end of the last period allocated. Plan credits enter the ledger
  only through ``ledger.service.grant`` as ``plan`` lots; every allocation is recorded with the fee it
  owes (``plan_allocations``) for the invoice of its period. Services never commit.

- **The cycle close** (``cycle.py``, ``statements.py``, ``renewal.py``): boundary by boundary, in
  chunks of organizations, one transaction per step per chunk (statement, expiry and overage,
  allocation, invoice, charge), each step recorded per organization so a rerun resumes; a suspended
  organization's allocation is withheld and released once when it pays (``suspension.py``).
- **Invoices and credit notes** (``invoices.py``, ``pdf.py``, ``credit_notes.py``,
  ``credit_note_pdf.py``); **payments** (``payments/``: the provider interface, the sandbox and
  Stripe); **purchases**, **refunds**, guarded **auto top-up** and **dunning**.
- **Time**: a test-environment organization may live on a test clock (``test_clocks.py``); every
  billing action for it happens at its clock's time (``org_time.py``).

See docs/billing.md.
"""
