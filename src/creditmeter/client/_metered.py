"""The handle ``metered`` yields, and the parts of ``metered`` both clients share.

``with client.metered(org, "training", estimate={"gpu_seconds": 3600}) as m:`` places a hold for
the estimate (or, with ``hold=False``, asks the gate and raises :class:`InsufficientCredits` if it
says no), runs the block, then settles the hold with the quantities the block set (or records the
usage when no hold was placed). If the block raises, the hold is released and the error re-raised:
nothing is charged for an operation that failed. Work that was done is always recorded: when the
block outlived its hold (``hold_expired``) or the hold was released meanwhile, the usage is recorded
without it. The event id is fixed before the block runs, so a settle that still fails after the
retries can be resent by hand without risk of charging twice::

    client.settle(m.hold.id, m.final_quantities, event_id=m.event_id, member=m.member,
                  cache_hit=m.cache_hit, metadata=m.metadata)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from creditmeter.client import _calls as calls
from creditmeter.client._errors import (
    CODE_CLASSES,
    CreditmeterError,
    HoldNotActive,
    InsufficientCredits,
)
from creditmeter.client._models import Authorization, Hold, UsageResult
from creditmeter.client._values import Credits, Quantity, new_id, quantities_json, quantity_json

#: The clock ``metered`` measures elapsed time with (monotonic; replaced in tests).
clock = time.monotonic
log = logging.getLogger("creditmeter.client")
#: Settle refusals after which the usage is recorded without the hold instead.
LAPSED_CODES = frozenset({"hold_expired", "hold_released"})
#: Measured seconds are rounded to milliseconds.
_MEASURE_STEP = Decimal("0.001")


class Meter:
    """What ``metered`` yields: set the actual ``quantities`` (or call :meth:`set`) in the block.

    After the block, ``elapsed`` holds the measured wall-clock seconds and ``result`` the recorded
    usage. ``hold`` is the hold placed (``hold=True``), ``authorization`` the gate's answer
    (``hold=False``). ``event_id`` is the usage event's id (its idempotency key), fixed up front.
    ``metadata``, ``cache_hit`` and ``member`` may be changed in the block; they go with the usage
    event."""

    def __init__(
        self,
        organization: str,
        operation: str,
        *,
        project: str | None = None,
        member: str | None = None,
        event_id: str | None = None,
        measure: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.organization = organization
        self.operation = operation
        self.project = project
        self.member = member
        self.event_id = new_id() if event_id is None else str(event_id)
        self.measure = measure
        self.quantities: dict[str, Quantity] = {}
        self.metadata: dict[str, Any] | None = None if metadata is None else dict(metadata)
        self.cache_hit: bool | None = None
        self.hold: Hold | None = None
        self.authorization: Authorization | None = None
        self.elapsed: Decimal | None = None
        self.result: UsageResult | None = None
        self._started = clock()
        self._final: dict[str, Quantity] = {}

    def __repr__(self) -> str:
        return (
            f"Meter(organization={self.organization!r}, operation={self.operation!r}, "
            f"event_id={self.event_id!r}, quantities={self.quantities!r})"
        )

    def set(self, **quantities: Quantity) -> None:
        """Set (or overwrite) actual quantities, e.g. ``m.set(gpu_seconds=5400, data_gb=12)``.
        Each value is checked at once (a bool, NaN or an object fails here, not after the block)."""
        for name, value in quantities.items():
            quantity_json(value, f"quantity {name!r}")
        self.quantities.update(quantities)

    @property
    def final_quantities(self) -> dict[str, Quantity]:
        """The quantities sent when the block ended (its own plus the measured one); empty before."""
        return dict(self._final)

    def _start(self) -> None:
        """Start the wall clock (called just before the block runs)."""
        self._started = clock()

    def _stop(self) -> None:
        """Stop the clock and fix the final quantities (checked here, before anything is sent).

        A ``measure`` quantity the block did not set itself receives the elapsed seconds."""
        self.elapsed = Decimal(repr(max(0.0, clock() - self._started))).quantize(_MEASURE_STEP)
        final: dict[str, Quantity] = dict(self.quantities)
        if self.measure is not None and self.measure not in final:
            final[self.measure] = self.elapsed
        quantities_json(final)
        self._final = final

    def _settle_call(self, hold: Hold) -> calls.Call[UsageResult]:
        return calls.settle(
            hold.id,
            self._final,
            event_id=self.event_id,
            member=self.member,
            occurred_at=None,
            cache_hit=self.cache_hit,
            metadata=self.metadata,
        )

    def _record_call(self) -> calls.Call[UsageResult]:
        event = calls.usage_event(
            self.organization,
            self.operation,
            self._final,
            event_id=self.event_id,
            project=self.project,
            member=self.member,
            occurred_at=None,
            cache_hit=self.cache_hit,
            hold=None,
            metadata=self.metadata,
        )
        return calls.record(event)


def lapsed(error: HoldNotActive, hold: Hold) -> bool:
    """Whether settling failed because the hold lapsed (expired or released by someone else):
    the work was done, so ``metered`` then records the usage without the hold."""
    if error.code not in LAPSED_CODES:
        return False
    log.warning(
        "hold %s is no longer active (%s); recording the usage without it", hold.id, error.code
    )
    return True


def split_estimate(
    estimate: Mapping[str, Quantity] | Credits | None,
) -> tuple[Mapping[str, Quantity] | None, Credits | None]:
    """``metered``'s ``estimate``: a quantities mapping, or a credits amount."""
    if estimate is None:
        return None, None
    if isinstance(estimate, Mapping):
        return estimate, None
    return None, estimate


def refusal(authorization: Authorization, meter: Meter) -> InsufficientCredits:
    """The error for a gate that said no (its ``reason`` picks the class)."""
    cls = CODE_CLASSES.get(authorization.reason, InsufficientCredits)
    if not issubclass(cls, InsufficientCredits):
        cls = InsufficientCredits
    return cls(
        f"the gate refused {meter.operation!r} for organization {meter.organization!r}: "
        f"{authorization.reason} (available {authorization.available}, "
        f"estimated {authorization.estimated_credits})",
        code=authorization.reason or InsufficientCredits.code,
    )


def release_failed(error: BaseException, hold: Hold, release_error: CreditmeterError) -> None:
    """Note on the block's own error that the hold could not be released (it expires by itself)."""
    error.add_note(
        f"creditmeter: releasing hold {hold.id} failed too ({release_error}); "
        f"its credits come back by themselves when it expires at {hold.expires_at.isoformat()}"
    )
