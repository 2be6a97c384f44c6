"""Find a PostgreSQL server for the tests, or start a throwaway one from the installed binaries.

Order: ``CREDITMETER_TEST_POSTGRES_URL`` (or the local default on 127.0.0.1:5432, trust auth); if that does
not answer, a temporary cluster made with ``initdb``/``pg_ctl`` from ``/usr/lib/postgresql/*/bin``. If
neither works the PostgreSQL half of the suite is skipped with the reason — except under ``CI=true``,
where it fails instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(conninfo: str) -> bool:
    try:
        with psycopg.connect(conninfo, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _temporary_cluster() -> Iterator[str]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        raise RuntimeError("no PostgreSQL server binaries (initdb) installed")
    bindir = os.path.dirname(initdb)
    datadir = tempfile.mkdtemp(prefix="creditmeter-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(datadir, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", datadir, "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            os.path.join(bindir, "pg_ctl"),
            "-D",
            datadir,
            "-w",
            "-l",
            os.path.join(datadir, "log"),
            "-o",
            f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, os.path.join(bindir, "pg_ctl"), "-D", datadir, "-m", "fast", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A conninfo URL of a reachable server (admin database)."""
    url = os.environ.get("CREDITMETER_TEST_POSTGRES_URL", DEFAULT_URL)
    if _answers(url):
        yield url
        return
    with _temporary_cluster() as started:
        for _ in range(50):
            if _answers(started):
                break
            time.sleep(0.1)
        yield started


@contextlib.contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """Create a uniquely named database and drop it afterwards. Yields its SQLAlchemy URL."""
    name = f"creditmeter_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
