"""The FastAPI application factory."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy import text

from creditmeter import __version__
from creditmeter.api import (
    problems,
    routes_alerts,
    routes_billing,
    routes_credit_notes,
    routes_events,
    routes_invoices,
    routes_ledger,
    routes_metering,
    routes_notifications,
    routes_orgs,
    routes_payments,
    routes_test_clocks,
    routes_webhooks,
)
from creditmeter.api.deps import json_body
from creditmeter.api.limits import BodySizeLimit
from creditmeter.api.nul_paths import RefuseNulPaths
from creditmeter.api.org_refs import OrgRefs
from creditmeter.api.problems import problem
from creditmeter.config import Settings
from creditmeter.kit.db import Database
from creditmeter.pricing.ratecard import load_rate_card

DESCRIPTION = """
creditmeter prices AI Engine operations, debits each organization's prepaid credits in real time and
keeps an exact double-entry ledger of every change.

Authenticate with `Authorization: Bearer <API key>`. Credits are decimal strings (`"12.5"`) with at most
six decimal places. Errors are `application/problem+json` with a stable `code`.
"""


def create_app(settings: Settings | None = None, db: Database | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    # The interactive docs at /docs serve Swagger UI's files from the installed package (under
    # /static-offline-docs), never from a CDN: they work on a machine with no internet access.
    app = FastAPIOffline(
        title="creditmeter",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.settings = settings
    app.state.db = db or Database(settings.database_url)
    app.state.rate_card = load_rate_card(settings.rate_card_path)
    problems.install(app)
    app.add_middleware(BodySizeLimit)
    app.add_middleware(OrgRefs)  # /v1/organizations/{external_id}/… (before routing)
    app.add_middleware(RefuseNulPaths)  # a path holding NUL names nothing (outermost)
    app.include_router(routes_orgs.router, dependencies=[Depends(json_body)])
    app.include_router(routes_ledger.router, dependencies=[Depends(json_body)])
    app.include_router(routes_metering.router, dependencies=[Depends(json_body)])
    app.include_router(routes_events.router)
    app.include_router(routes_billing.router, dependencies=[Depends(json_body)])
    app.include_router(routes_invoices.router, dependencies=[Depends(json_body)])
    app.include_router(routes_credit_notes.router)
    app.include_router(routes_test_clocks.router, dependencies=[Depends(json_body)])
    app.include_router(routes_payments.router, dependencies=[Depends(json_body)])
    app.include_router(routes_alerts.router, dependencies=[Depends(json_body)])
    app.include_router(routes_webhooks.router, dependencies=[Depends(json_body)])
    app.include_router(routes_notifications.router, dependencies=[Depends(json_body)])

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        """A browser opening the server's address lands on the API docs."""
        return RedirectResponse(f"{request.scope.get('root_path', '')}/docs")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=None)
    def readyz() -> Any:
        """The database answers."""
        try:
            with app.state.db.read() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # readiness reports any failure as not ready
            return problem(
                503, "database_unavailable", f"database unreachable: {type(exc).__name__}"
            )
        return JSONResponse({"status": "ready", "database": app.state.db.dialect})

    return app
