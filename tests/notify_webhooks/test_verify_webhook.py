"""The SDK's ``verify_webhook`` (standard library only) accepts exactly what the reference
``standardwebhooks`` package signs, and refuses altered bodies, old or future timestamps, wrong
secrets and missing headers, with a typed error."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from creditmeter.client import WebhookVerificationError, verify_webhook
from creditmeter.client._webhooks import sign
from creditmeter.notify.webhooks import new_secret

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
BODY = json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {"total": "12.50"}}).encode()


def headers(secrets: list[str], at: datetime = NOW, body: bytes = BODY) -> dict[str, str]:
    return {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(
            Webhook(s).sign(msg_id="evt_1", timestamp=at, data=body) for s in secrets
        ),
    }


def test_a_request_signed_by_the_reference_package_verifies() -> None:
    secret = new_secret()
    event = verify_webhook(BODY, headers([secret]), secret, now=NOW)
    assert event == json.loads(BODY)
    assert verify_webhook(BODY.decode(), headers([secret]), secret, now=NOW.timestamp()) == event
    # header names are case-insensitive, as HTTP's are
    upper = {k.upper(): v for k, v in headers([secret]).items()}
    assert verify_webhook(BODY, upper, secret, now=NOW)["id"] == "evt_1"


def test_our_signature_is_the_reference_packages() -> None:
    secret = new_secret()
    assert sign(secret, "evt_1", int(NOW.timestamp()), BODY) == Webhook(secret).sign(
        "evt_1", NOW, BODY
    )
    # and the reference package verifies what creditmeter's secrets sign (whsec_ + base64)
    Webhook(secret).verify(BODY, headers([secret], at=datetime.now(UTC)))


def test_during_a_rotation_either_secret_verifies_the_two_signatures() -> None:
    old, new = new_secret(), new_secret()
    both = headers([new, old])
    assert len(both["webhook-signature"].split(" ")) == 2
    assert verify_webhook(BODY, both, old, now=NOW)["id"] == "evt_1"
    assert verify_webhook(BODY, both, new, now=NOW)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(BODY, both, new_secret(), now=NOW)
    assert caught.value.reason == "no_matching_signature"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (BODY.replace(b"12.50", b"99.50"), "no_matching_signature"),
        (BODY + b" ", "no_matching_signature"),
        (json.dumps(json.loads(BODY), indent=2).encode(), "no_matching_signature"),
    ],
    ids=["altered-amount", "trailing-space", "re-serialized"],
)
def test_an_altered_body_is_refused(body: bytes, reason: str) -> None:
    secret = new_secret()
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(body, headers([secret]), secret, now=NOW)
    assert caught.value.reason == reason


def test_timestamps_outside_the_tolerance_are_refused_either_way() -> None:
    secret = new_secret()
    signed = headers([secret])
    for later, reason in [
        (timedelta(minutes=6), "timestamp_too_old"),
        (-timedelta(minutes=6), "timestamp_too_new"),
    ]:
        with pytest.raises(WebhookVerificationError) as caught:
            verify_webhook(BODY, signed, secret, now=NOW + later)
        assert caught.value.reason == reason
    assert verify_webhook(BODY, signed, secret, now=NOW + timedelta(minutes=4))
    assert verify_webhook(
        BODY, signed, secret, now=NOW + timedelta(hours=2), tolerance_seconds=7200
    )


def test_a_changed_timestamp_breaks_the_signature() -> None:
    secret = new_secret()
    forged = {**headers([secret]), "webhook-timestamp": str(int(NOW.timestamp()) + 60)}
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(BODY, forged, secret, now=NOW)
    assert caught.value.reason == "no_matching_signature"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-id": ""}, "missing_header"),
        ({"webhook-signature": ""}, "missing_header"),
        ({"webhook-timestamp": "soon"}, "invalid_timestamp"),
        ({"webhook-timestamp": "-5"}, "invalid_timestamp"),
        ({"webhook-signature": "v2,abc"}, "no_matching_signature"),
    ],
)
def test_bad_headers_are_refused(change: dict[str, str], reason: str) -> None:
    secret = new_secret()
    sent = {**headers([secret]), **change}
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(BODY, sent, secret, now=NOW)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_a_secret_that_is_not_base64_is_refused() -> None:
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(BODY, headers([new_secret()]), "whsec_not*base64!", now=NOW)
    assert caught.value.reason == "invalid_secret"


def test_a_signed_body_that_is_not_a_json_object_is_refused() -> None:
    secret = new_secret()
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(b"[1, 2]", headers([secret], body=b"[1, 2]"), secret, now=NOW)
    assert caught.value.reason == "invalid_payload"


def test_secrets_are_standard_webhooks_secrets() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    import base64

    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert new_secret() != secret
