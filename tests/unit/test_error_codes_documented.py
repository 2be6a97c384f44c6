"""Every error ``code`` the server can send is listed in the error table of docs/api.md.

The codes are read from the source, so the table stays complete as codes are added:

- ``code = "…"`` in a class (``CreditmeterError`` and its subclasses) or assigned to a variable
  ``code`` (literal branches of ``a if … else "b"`` and ``x or "c"`` too);
- ``code="…"`` passed to any call;
- a literal passed where a function takes a parameter named ``code`` (``problem(422, "…")``,
  ``_invalid("…", message)``, ``CardError(field, "…", message)``);
- codes computed from something else (an f-string, a reason, a processor's answer) are listed in
  :data:`COMPUTED` with every value they can take; a computed code this test does not know fails it,
  saying where — add it there and to the table.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "creditmeter"
API_DOCS = ROOT / "docs" / "api.md"
#: The SDK rebuilds errors from codes it receives and sends none; migrations send nothing.
NOT_SERVER = {"client", "migrations"}

#: ``"path: expression"`` of every code computed at run time -> the codes it can be.
COMPUTED: dict[str, set[str]] = {
    # problem(): an error's own code, forwarded (the error's code is collected where it is raised)
    "api/problems.py: exc.code": set(),
    "api/problems.py: {404: 'not_found', 405: 'method_not_allowed'}.get(exc.status_code, "
    "'http_error')": {"not_found", "method_not_allowed", "http_error"},
    # a grant's one cross-field error, else validation_failed
    "api/routes_ledger.py: errors[0]['type'] if len(errors) == 1 else 'validation_failed'": {
        "invalid_cost_basis",
        "invalid_expiry",
        "validation_failed",
    },
    "api/routes_events.py: exc.code": set(),
    "api/usage_batch.py: e.code": set(),
    "api/routes_payments.py: exc.problems[0].code": set(),  # cards.CardError codes
    "billing/payments/sandbox.py: exc.code": set(),  # cards.CardError codes
    "metering/ingest.py: f'unknown_{what}'": {"unknown_project", "unknown_member"},
    "metering/holds.py: f'hold_{hold.status}'": {"hold_settled", "hold_released", "hold_expired"},
    "metering/holds.py: decision.reason": {
        "insufficient_credits",
        "project_budget_exceeded",
        "organization_suspended",
    },
    "billing/dunning.py: f'invoice_{invoice.status}'": {"invoice_paid", "invoice_void"},
    # the type of the first pricing error (kinds collected from pricing/domain.py: _err(...))
    "pricing/domain.py: errors[0]['type']": {
        "invalid_quantity",
        "unknown_class",
        "unknown_dimension",
        "unknown_operation",
        "no_rate_card_version",
        "invalid_occurred_at",
    },
    # a processor's decline reason (the sandbox's are these; Stripe's are documented as a family)
    "billing/payments/stripe_provider.py: _reason(exc)": {"card_declined"},
    "billing/payments/stripe_provider.py: exc.code or 'refund_failed'": {"refund_failed"},
    "billing/dunning.py: attempt.payment.failure_code or 'payment_failed'": {
        "card_declined",
        "insufficient_funds",
        "payment_failed",
    },
    "billing/purchases.py: row.failure_code or 'payment_failed'": {
        "card_declined",
        "insufficient_funds",
        "payment_failed",
    },
    "billing/refunds.py: row.failure_code or 'refund_failed'": {"refund_failed"},
}


def _literals(node: ast.AST) -> set[str]:
    """String constants a code expression can evaluate to (``a if c else "b"``, ``x or "c"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _literals(node.body) | _literals(node.orelse)
    if isinstance(node, ast.BoolOp):
        return set().union(*(_literals(v) for v in node.values))
    return set()


def _fully_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.IfExp):
        return _fully_literal(node.body) and _fully_literal(node.orelse)
    return False


def _name_of(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _files() -> list[tuple[str, ast.Module]]:
    files = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE)
        if relative.parts[0] in NOT_SERVER:
            continue
        files.append((relative.as_posix(), ast.parse(path.read_text(), filename=str(path))))
    return files


def _takes_code(tree: ast.Module) -> tuple[set[str], dict[str, int]]:
    """The functions and classes a module defines, and of those the ones taking a parameter named
    ``code``: its positional index as callers pass it (a class by its ``__init__``)."""
    defined: set[str] = set()
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        owners: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, int]] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            owners.append((node.name, node, 0))
        elif isinstance(node, ast.ClassDef):
            defined.add(node.name)
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    owners.append((node.name, item, 1))
        for name, func, skip in owners:
            defined.add(name)
            names = [a.arg for a in func.args.posonlyargs + func.args.args]
            if "code" in names:
                found[name] = names.index("code") - skip
    return defined, found


class _Collector:
    def __init__(self) -> None:
        self.files = _files()
        self.local = {path: _takes_code(tree) for path, tree in self.files}
        everywhere: dict[str, set[int]] = {}
        for _, found in self.local.values():
            for name, index in found.items():
                everywhere.setdefault(name, set()).add(index)
        # an imported function: known when every definition of that name agrees
        self.imported = {n: next(iter(i)) for n, i in everywhere.items() if len(i) == 1}
        self.codes: dict[str, list[str]] = {}
        self.unknown: list[str] = []
        self.used: set[str] = set()

    def code_index(self, path: str, name: str) -> int | None:
        defined, found = self.local[path]
        if name in defined:
            return found.get(name)
        return self.imported.get(name)

    def add(self, values: set[str], where: str) -> None:
        for code in values:
            self.codes.setdefault(code, []).append(where)

    def expression(self, path: str, expr: ast.expr, line: int, scope: _Scope) -> None:
        """A code given as ``expr``: its literals, and what it computes (if anything)."""
        self.add(_literals(expr), f"{path}:{line}")
        if _fully_literal(expr):
            return
        if isinstance(expr, ast.Name) and expr.id == "code":
            if "code" in scope.parameters:
                return  # passed on: collected where the function is called
            for value in scope.assigned:  # a local variable: what it was given
                self.expression(path, value, line, _Scope())
            return
        key = f"{path}: {ast.unparse(expr)}"
        if key in COMPUTED:
            self.used.add(key)
            self.add(COMPUTED[key], f"{path}:{line}")
        else:
            self.unknown.append(f"{key} (line {line})")

    def run(self) -> None:
        for path, tree in self.files:
            self.body(path, tree, _Scope())

    def body(self, path: str, node: ast.AST, scope: _Scope) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                self.body(path, child, _Scope.of(child))
                continue
            if isinstance(child, ast.ClassDef):
                for item in child.body:
                    if isinstance(item, ast.Assign) and _assigns_code(item):
                        self.add(_literals(item.value), f"{path}:{item.lineno}")
            if isinstance(child, ast.Assign) and _assigns_code(child):
                self.add(_literals(child.value), f"{path}:{child.lineno}")
            if isinstance(child, ast.Call):
                for keyword in child.keywords:
                    if keyword.arg == "code":
                        self.expression(path, keyword.value, child.lineno, scope)
                index = self.code_index(path, _name_of(child.func))
                if index is not None and index < len(child.args):
                    self.expression(path, child.args[index], child.lineno, scope)
            self.body(path, child, scope)


class _Scope:
    def __init__(self) -> None:
        self.parameters: set[str] = set()
        self.assigned: list[ast.expr] = []

    @classmethod
    def of(cls, func: ast.FunctionDef | ast.AsyncFunctionDef) -> _Scope:
        scope = cls()
        args = func.args
        scope.parameters = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        for node in ast.walk(func):
            if isinstance(node, ast.Assign) and (_assigns_code(node) or _unpacks_code(node)):
                scope.assigned.append(node.value)
        return scope


def _assigns_code(node: ast.Assign) -> bool:
    return any(isinstance(t, ast.Name) and t.id == "code" for t in node.targets)


def _unpacks_code(node: ast.Assign) -> bool:
    """``code, message = reason(…)``: a code computed by a call (listed in COMPUTED)."""
    return any(
        isinstance(t, ast.Tuple) and any(isinstance(e, ast.Name) and e.id == "code" for e in t.elts)
        for t in node.targets
    )


def server_codes() -> tuple[dict[str, list[str]], list[str]]:
    """(code -> where it is written, computed code expressions not in COMPUTED)."""
    collector = _Collector()
    collector.run()
    stale = sorted(set(COMPUTED) - collector.used)
    return collector.codes, collector.unknown + [
        f"{key} (listed, no longer in the code)" for key in stale
    ]


def documented_codes() -> set[str]:
    """The codes in the error table of docs/api.md: the code column of each row
    ``| status | `code`, `code` | when |`` (a row may name several codes of one kind)."""
    text = API_DOCS.read_text()
    section = text[text.index("## Errors") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    codes: set[str] = set()
    for row in re.findall(r"^\| \d{3} \| ([^|]+) \|", section, re.MULTILINE):
        codes.update(re.findall(r"`([a-z0-9_]+)`", row))
    return codes


def test_every_computed_code_is_known_to_this_test() -> None:
    _, unknown = server_codes()
    assert unknown == [], (
        "codes computed at run time that COMPUTED in this test does not list (add each with every "
        f"value it can take, and document them in docs/api.md): {unknown}"
    )


def test_every_error_code_the_server_sends_is_in_the_api_error_table() -> None:
    codes, _ = server_codes()
    assert len(codes) > 60  # the collector found the codes (not an empty pass)
    missing = {
        code: where for code, where in sorted(codes.items()) if code not in documented_codes()
    }
    assert missing == {}, f"error codes missing from the table in docs/api.md: {missing}"


def test_the_collector_sees_each_way_a_code_is_written() -> None:
    codes, _ = server_codes()
    for code, where in {
        "not_found": "errors.py",  # a class attribute
        "insufficient_scope": "api/deps.py",  # code= keyword
        "payload_too_large": "api/limits.py",  # send_problem(send, 413, "payload_too_large", ...)
        "database_unavailable": "api/app.py",  # problem(503, ...)
        "json_too_deep": "api/jsonio.py",  # code = "..." then passed on
        "invalid_expiry_month": "billing/payments/cards.py",  # CardError(field, code, message)
        "payment_method_required": "billing/dunning.py",  # _invalid(code, message)
    }.items():
        assert code in codes, code
        assert any(place.startswith(where) for place in codes[code]), (code, codes[code])
