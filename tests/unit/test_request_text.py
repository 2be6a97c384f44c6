"""Every field of every request body refuses text holding a lone surrogate (``"\\udc00"``), whatever
shape it takes (a string, a list of strings, an object's keys or values): such text can be neither
stored nor sent back. This guards the rule as fields are added; the API tests send it end to end."""

from __future__ import annotations

import importlib
import inspect
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError

from creditmeter.api.jsonio import is_text
from creditmeter.api.schemas import Request

LONE = "\udc00"
MODULES = ["", "_metering", "_billing", "_payments", "_invoices", "_corrections"]
#: Items validated one by one as usage events (tested through the API).
SKIPPED = {("UsageBatchIn", "events")}
#: Objects whose values are checked when the event is priced, not here: a quantity is a number or
#: a selector the rate card names (tested through the API: 422 invalid_quantity / unknown_class).
PRICED_VALUES = {"quantities"}


def request_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    for suffix in MODULES:
        module = importlib.import_module(f"creditmeter.api.schemas{suffix}")
        for value in vars(module).values():
            is_request = inspect.isclass(value) and issubclass(value, Request)
            if is_request and value is not Request and value not in found:
                found.append(value)
    return found


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, BaseModel):
        return strings_in(value.model_dump())
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in strings_in(v)]
    return []


def test_pydantic_core_refuses_a_lone_surrogate_in_a_constrained_string_only() -> None:
    """What the quantity names rely on; a plain ``str`` would let it through."""
    with pytest.raises(ValidationError) as raised:
        TypeAdapter(Annotated[str, StringConstraints(max_length=9)]).validate_python(LONE)
    assert raised.value.errors()[0]["type"] == "string_unicode"
    assert TypeAdapter(str).validate_python(LONE) == LONE


@pytest.mark.parametrize("model", request_models(), ids=lambda m: m.__name__)
def test_no_field_of_a_request_body_lets_a_lone_surrogate_through(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        if (model.__name__, name) in SKIPPED:
            continue
        kind: Any = field.annotation
        adapter: TypeAdapter[Any] = TypeAdapter(
            Annotated[kind, *field.metadata] if field.metadata else kind
        )
        samples = (f"a{LONE}", [f"a{LONE}"], {f"a{LONE}": "1"}, {"a": f"b{LONE}"}, {"a": [LONE]})
        for sample in samples:
            try:
                value = adapter.validate_python(sample)
            except ValidationError:
                continue
            texts = strings_in(list(value) if name in PRICED_VALUES else value)
            assert all(is_text(s) for s in texts), (model.__name__, name, value)
