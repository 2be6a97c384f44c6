"""Operator configuration files (the rate card, the plans): a TOML file shipped in the package as the
default, another named by an argument or an environment variable, parsed once per path and kept."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from importlib import resources
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigFile(Generic[T]):
    """Loads and caches one kind of configuration file.

    ``parse(data, source)`` validates a document and raises the kind's own error; ``error(message)``
    makes that error for a file that cannot be read; ``what`` names the kind in messages."""

    def __init__(
        self,
        *,
        package: str,
        default_name: str,
        env_var: str,
        what: str,
        parse: Callable[[bytes, str], T],
        error: Callable[[str], Exception],
    ) -> None:
        self.package, self.default_name, self.env_var, self.what = (
            package,
            default_name,
            env_var,
            what,
        )
        self.default_source = f"{package.replace('.', '/')}/{default_name} (built in)"
        self._parse, self._error = parse, error
        self._cache: dict[str, T] = {}
        self._lock = threading.Lock()

    def load(self, path: str | None = None) -> T:
        """The file at ``path``, else the one the environment variable names, else the default."""
        chosen = path or os.environ.get(self.env_var) or None
        key = os.path.abspath(chosen) if chosen else self.default_source
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                found = self._cache[key] = self._read(chosen, key, from_env=not path)
        return found

    def clear(self) -> None:
        """Forget parsed files, so the next ``load`` re-reads its file."""
        with self._lock:
            self._cache.clear()

    def _read(self, chosen: str | None, key: str, from_env: bool) -> T:
        if chosen is None:
            data = resources.files(self.package).joinpath(self.default_name).read_bytes()
            return self._parse(data, self.default_source)
        try:
            with open(key, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            origin = f" (named by {self.env_var})" if from_env else ""
            raise self._error(f"cannot read {self.what} {key}{origin}: {exc.strerror}") from exc
        return self._parse(data, key)
