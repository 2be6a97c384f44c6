"""A webhook receiver for the tests: a standalone HTTP server (standard library only, plus the
``standardwebhooks`` package to check signatures) run as a subprocess.

    python tests/receivers/webhook_receiver.py --log requests.jsonl --secrets secrets.json [--port 0]

It prints ``listening on http://127.0.0.1:<port>`` on its first line of stdout, then answers every
POST by the mode its path names, and appends one JSON line per request to ``--log`` *before*
answering (so a slow answer is already logged):

- ``/ok`` 200; ``/fail`` 500; ``/gone`` 410; ``/redirect`` 302 to ``/ok``;
- ``/slow?seconds=S`` waits S seconds (default 5), then 200;
- ``/retry-after?status=429&seconds=S`` (or ``&date=1``: the same wait as an HTTP date);
- ``/flaky?fail=N`` 500 for the first N requests of each ``webhook-id``, then 200;
- ``/big`` 500 with a 20 kB body.

``--secrets`` is a JSON object ``{"name": "whsec_…"}``, read again for every request (a test adds
the secret of an endpoint it has just created). Each line records the request (path, headers of
interest, the parsed envelope's id, type, organization and environment) and, per secret name:
``verified_with`` — the names whose secret passes ``standardwebhooks.Webhook.verify`` (signature
and the timestamp's 5-minute tolerance against this machine's clock) — and ``signed_with`` — the
names whose ``Webhook.sign`` of the received id, timestamp and body equals one of the signatures
sent (the signature alone: tests that move creditmeter's clock days ahead check this one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


class Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, log: Path, secrets: Path) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.log = log
        self.secrets = secrets
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()

    def write(self, record: dict[str, Any]) -> None:
        with self.lock, self.log.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def load_secrets(self) -> dict[str, str]:
        try:
            loaded: dict[str, str] = json.loads(self.secrets.read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return loaded


def check(secrets: dict[str, str], body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """Which secrets verify the request (with the library), fully and by signature alone."""
    verified, signed, reasons = [], [], {}
    sent = headers.get("webhook-signature", "").split(" ")
    for name, secret in secrets.items():
        hook = Webhook(secret)
        try:
            hook.verify(body, headers)
            verified.append(name)
        except WebhookVerificationError as exc:
            reasons[name] = str(exc)
        try:
            at = datetime.fromtimestamp(int(headers.get("webhook-timestamp", "")), tz=UTC)
        except ValueError:
            continue
        if hook.sign(headers.get("webhook-id", ""), at, body) in sent:
            signed.append(name)
    return {"verified_with": verified, "signed_with": signed, "failures": reasons}


class Handler(BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the JSON lines are the log

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        parts = urlsplit(self.path)
        mode = parts.path.strip("/").split("/")[0]
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        msg_id = headers.get("webhook-id", "")
        with self.server.lock:
            self.server.seen[msg_id] += 1
            seen = self.server.seen[msg_id]
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = {}
        status, extra, reply = self.answer(mode, query, seen)
        self.server.write(
            {
                "path": self.path,
                "mode": mode,
                "query": query,
                "received_at": time.time(),
                "webhook_id": msg_id,
                "webhook_timestamp": headers.get("webhook-timestamp"),
                "signatures": len(headers.get("webhook-signature", "").split()),
                "user_agent": headers.get("user-agent"),
                "content_type": headers.get("content-type"),
                "host": headers.get("host"),
                "event_id": envelope.get("id"),
                "type": envelope.get("type"),
                "organization_id": envelope.get("organization_id"),
                "environment": envelope.get("environment"),
                "alert_id": ((envelope.get("data") or {}).get("alert") or {}).get("id"),
                "status": status,
                **check(self.server.load_secrets(), body, headers),
            }
        )
        if mode == "slow":
            time.sleep(float(query.get("seconds", "5")))
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the sender gave up
            self.wfile.write(reply)

    def answer(
        self, mode: str, query: dict[str, str], seen: int
    ) -> tuple[int, dict[str, str], bytes]:
        if mode in {"ok", "slow"}:
            return 200, {}, b"thanks"
        if mode == "fail":
            return 500, {}, b"receiver error: \x00 something broke"
        if mode == "gone":
            return 410, {}, b"gone"
        if mode == "redirect":
            return 302, {"location": "/ok"}, b""
        if mode == "big":
            return 500, {}, b"x" * 20_000
        if mode == "flaky":
            if seen <= int(query.get("fail", "1")):
                return 500, {}, f"failing request {seen}".encode()
            return 200, {}, b"ok at last"
        if mode == "retry-after":
            seconds = int(query.get("seconds", "60"))
            if query.get("date"):
                when = datetime.now(UTC) + timedelta(seconds=seconds)
                value = format_datetime(when, usegmt=True)
            else:
                value = str(seconds)
            return int(query.get("status", "429")), {"retry-after": value}, b"slow down"
        return 404, {}, b"unknown mode"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--secrets", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = Receiver(args.port, args.log, args.secrets)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main(sys.argv[1:])
