"""The API docs work offline: `/` leads to `/docs`, whose page loads Swagger UI from this server only."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from creditmeter.api.app import create_app
from creditmeter.config import Settings


@pytest.fixture
def docs_client(tmp_path: Path) -> Iterator[TestClient]:
    # No database is touched: the docs page and its assets are static.
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}"))
    with TestClient(app) as client:
        yield client


def test_the_root_redirects_to_the_docs(docs_client: TestClient) -> None:
    response = docs_client.get("/", follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"
    assert docs_client.get("/").url.path == "/docs"


def test_the_docs_page_references_no_external_url_and_its_assets_are_served(
    docs_client: TestClient,
) -> None:
    page = docs_client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # Nothing is fetched from another host: no absolute URL, no protocol-relative one.
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.text, re.IGNORECASE)
    assert '"validatorUrl": null' in page.text  # no badge fetched from the public validator
    assets = re.findall(r'(?:href|src)="([^"]+)"', page.text)
    assert len(assets) == 3  # the stylesheet, the favicon and the script
    sizes = {}
    for asset in assets:
        assert asset.startswith("/"), asset
        served = docs_client.get(asset)
        assert served.status_code == 200, asset
        sizes[asset.rsplit("/", 1)[-1]] = len(served.content)
    assert sizes["swagger-ui-bundle.js"] > 500_000  # the real bundle, not a stub
    assert sizes["swagger-ui.css"] > 50_000
    spec = docs_client.get("/openapi.json")
    assert spec.status_code == 200
    assert "/" not in spec.json()["paths"]  # the redirect is not part of the API


def test_the_docs_honour_a_root_path_behind_a_proxy(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}"))
    with TestClient(app, root_path="/credits") as client:
        response = client.get("/", follow_redirects=False)
        assert response.headers["location"] == "/credits/docs"
        assert 'src="/credits/static-offline-docs/swagger-ui-bundle.js"' in client.get("/docs").text
