"""Metering: usage ingest (single, batch, CloudEvents), the gate, holds and project budgets.

Design note. This is the hot path. A batch of events is validated and priced one by one (each event
stands alone: a rejected event changes nothing), then applied per organization in one database
transaction: the organization's balance row is locked once, duplicates are found with one query, all
its events are debited as one journal transaction (postings aggregated per lot and per operation, each
event keeping its own allocation for exact refunds), the events are inserted with one statement and the
balance is updated once. An event id is applied at most once per organization and environment (a
unique constraint backs it). The gate reads the same rows the ledger writes, so there is no lag.
"""
