"""A path parameter holding the NUL character (``%00``) is a 404 on every route, on SQLite and
PostgreSQL, and changes nothing. PostgreSQL refuses NUL in text, so such a lookup used to fail in the
driver (500) for test clocks and payment methods (found by probing a served app)."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from creditmeter.kit.db import Database
from tests.metering import Headers, state_of


def test_every_route_answers_404_to_a_path_parameter_holding_nul(
    app: Any, client: TestClient, db: Database, operator: Headers, make_org: Any
) -> None:
    org = make_org("Acme AI", "acme")
    before = state_of(db, org)
    tried = 0
    for template, operations in app.openapi()["paths"].items():
        names = re.findall(r"{(\w+)}", template)
        for target in names:
            path = template
            for name in names:
                value = "x%00y" if name == target else (org if name == "org_id" else "x")
                path = path.replace(f"{{{name}}}", value)
            for method in operations:
                response = client.request(
                    method.upper(),
                    path,
                    headers={**operator, "Content-Type": "application/json"},
                    content=b"{}",
                )
                tried += 1
                assert response.status_code == 404, f"{method} {path}: {response.text}"
    assert tried > 40, tried
    assert state_of(db, org) == before
