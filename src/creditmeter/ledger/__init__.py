"""The credit ledger: lots, an append-only double-entry journal, and materialized balances.

Design note. Every change to an organization's credits is one journal transaction whose postings sum to
zero and name a single organization. Organization accounts are one per lot (spendable credits),
``arrears`` (usage that ran past zero, a non-positive account) and ``held`` (reservations). Platform
counter-accounts record where credits came from (``issuance:<source>``), where they went
(``consumption:<operation>``) and what expired unused (``breakage``). The ``lots.remaining_micros`` column and
the ``balances`` row are materialized sums of those postings, kept in step by the one write path
(:func:`creditmeter.ledger.service.post`) and re-proved by ``creditmeter verify``. On PostgreSQL a deferred
constraint trigger checks the zero-sum and single-organization rules again at commit.

The pure rules (burn order, how a debit splits over lots, arrears) live in :mod:`.domain`.
"""
