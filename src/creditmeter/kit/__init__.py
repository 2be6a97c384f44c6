"""Helpers that know no business area: credits, time, ids, database plumbing, pagination."""
