"""Notifications: the event catalog, webhooks, e-mail and alert rules (design note in catalog.py)."""
