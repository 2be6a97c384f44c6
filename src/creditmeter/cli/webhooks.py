"""(being written)"""

from __future__ import annotations

import typer

webhooks_app = typer.Typer(
    help="Webhook endpoints, their deliveries and replays.", no_args_is_help=True
)
