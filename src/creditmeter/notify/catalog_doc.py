"""docs/events.md, written from the catalog itself (``python -m creditmeter.notify.catalog_doc``), so
the documented payloads are the ones sent; a test fails when the file is out of date."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from creditmeter.notify.catalog import CATALOG, Envelope

HEADER = """# Event catalog

Every event creditmeter sends to webhooks (and, for some, by e-mail) is listed here with its version and
the schema of its `data`. This file is written from the code (`python -m creditmeter.notify.catalog_doc
> docs/events.md`); a test keeps them equal.

Each webhook request's body is an envelope:

| field | type | meaning |
| --- | --- | --- |
{envelope}

- The `webhook-id` header carries the event `id`: the same on every retry and redelivery, so a receiver
  de-duplicates on it (delivery is at least once).
- `version` is the version of the type's `data` schema. A field may be added to a version; a changed
  meaning or a removed field is a new version.
- Credits are decimal strings (`"12.5"`); money is a decimal string in the major unit of `currency`;
  times are RFC 3339 UTC.
- Events belong to the environment of their cause: a `cm_test_…` organization's usage tells the
  test-environment endpoints.

| type | version | e-mailed | when |
| --- | --- | --- | --- |
{summary}
"""


def _type_of(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type_of(s, defs) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_of(schema.get('items', {}), defs)}"
    if kind == "string" and schema.get("format") == "date-time":
        return "timestamp"
    return str(kind)


def _fields(schema: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        note = prop.get("description", "")
        optional = "" if name in required else " (optional)"
        rows.append(f"| `{name}` | {_type_of(prop, defs)}{optional} | {note} |")
    return rows


def render() -> str:
    envelope = Envelope.model_json_schema()
    text = HEADER.format(
        envelope="\n".join(_fields(envelope, {})),
        summary="\n".join(
            f"| [`{t.name}`](#{t.name.replace('.', '')}) | {t.version} | "
            f"{'yes' if t.emailed else 'no'} | {t.description} |"
            for t in CATALOG.values()
        ),
    )
    sections = []
    for t in CATALOG.values():
        schema = t.data.model_json_schema()
        defs = schema.get("$defs", {})
        lines = [f"## {t.name}", "", f"Version {t.version}. {t.description}", ""]
        lines += ["| field | type | meaning |", "| --- | --- | --- |", *_fields(schema, defs)]
        for name, sub in defs.items():
            lines += ["", f"`{name}`:", "", "| field | type | meaning |", "| --- | --- | --- |"]
            lines += _fields(sub, defs)
        sections.append("\n".join(lines))
    return text + "\n" + "\n\n".join(sections) + "\n"


def main() -> None:
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(render(), encoding="utf-8")
    else:
        sys.stdout.write(render())


if __name__ == "__main__":
    main()
