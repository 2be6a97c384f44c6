"""JSON out of the API that cannot fail on what a client sent, and the text rule that keeps it so.

A JSON body may carry ``"\\udc00"``: an escape for a lone UTF-16 surrogate, which Python's parser turns
into a ``str`` that no UTF-8 encoder accepts. Such strings never pass validation (every ``str`` field
refuses them, code ``validation_failed`` with the field's type ``invalid_unicode``), but an answer may
still echo a client's text (the id of a rejected batch event, the name of an unknown field). So every
answer is encoded by :func:`encode`, which never raises for text: after a write has committed, nothing
between the commit and the answer may fail.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi.responses import Response

from creditmeter.errors import InvalidRequest


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (no lone surrogate), i.e. encodable as UTF-8. One pass
    in C: ASCII (the usual case) returns at once."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(value: Any) -> Any:
    """``value`` with every string (keys too) that is not valid text written with visible escapes:
    a lone surrogate becomes the six characters ``\\udc00``."""
    if isinstance(value, str):
        return value if is_text(value) else value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


def encode(content: Any) -> bytes:
    """``content`` as compact UTF-8 JSON (what ``JSONResponse`` sends), by orjson. What orjson
    refuses — text that is not valid Unicode, integers past 64 bits — is encoded by the standard
    library with such text escaped visibly, so encoding never fails for JSON-shaped content."""
    try:
        return orjson.dumps(content)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        pass
    text = json.dumps(
        printable(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
    )
    return text.encode()


def json_response(
    content: Any,
    status_code: int = 200,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    """A JSON answer encoded by :func:`encode` (so it is built completely before it is returned)."""
    return Response(encode(content), status_code, headers, media_type)


def unreadable_body(exc: BaseException | None) -> InvalidRequest | None:
    """The problem (422) for a body the JSON parser could not read for a reason other than its
    syntax (which is ``validation_failed``, type ``json_invalid``): bytes that are not UTF-8
    (``invalid_json``), nesting deeper than the parser goes (``json_too_deep``), a number it
    refuses such as an integer of more than 4,300 digits (``invalid_json``). None for anything else."""
    if isinstance(exc, json.JSONDecodeError):
        return None
    if isinstance(exc, UnicodeDecodeError):
        message = (
            f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason}); send JSON encoded as "
            "UTF-8"
        )
        code = "invalid_json"
    elif isinstance(exc, RecursionError):
        message = (
            "the body's JSON nests arrays and objects too deeply to be read; nothing the API "
            "accepts nests more than a few dozen levels"
        )
        code = "json_too_deep"
    elif isinstance(exc, ValueError):
        message = f"the body is not valid JSON ({exc})"
        code = "invalid_json"
    else:
        return None
    return InvalidRequest(
        message, code=code, errors=[{"field": "body", "message": message, "type": code}]
    )
