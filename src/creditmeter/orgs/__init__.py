"""Organizations (the tenants), their projects and members, and API keys.

Design note. An organization owns one credit balance per environment (``live`` and ``test``) shared by all
its projects and members. API keys are random secrets shown once and stored as a SHA-256 digest (a key holds
256 bits of entropy, so a slow password hash would add latency on every request without adding safety).
A key is either an operator key (no organization, every organization) or scoped to one organization with
one or more of ``org:admin``, ``org:ingest`` and ``org:read``.
"""
