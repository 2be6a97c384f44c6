"""Where webhooks may go: the address rules, and the request sent to an address just checked (the
URL's host kept in ``Host`` and as the TLS server name), so DNS rebinding cannot steer it."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest

from creditmeter.config import Settings
from creditmeter.notify import destinations, webhook_http
from creditmeter.notify.destinations import DestinationRefused, refused_reason
from creditmeter.notify.webhooks import new_secret


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.0.1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("100.64.0.1", "not a public address"),
        ("::1", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("fc00::1", "a private address"),
        ("::ffff:127.0.0.1", "a loopback address (127.0.0.1, embedded)"),
        ("2002:a00:1::", "a private address (10.0.0.1, embedded)"),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_which_addresses_are_refused(address: str, kind: str | None) -> None:
    assert refused_reason(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://93.184.215.14/", "webhook_url_invalid"),
        ("http:///path", "webhook_url_invalid"),
        ("https://u:p@93.184.215.14/", "webhook_url_invalid"),
        ("https://93.184.215.14/#frag", "webhook_url_invalid"),
        ("https://93.184.215.14:99999/", "webhook_url_invalid"),
        ("https://93.184.215.14/a b", "webhook_url_invalid"),
        ("https://10.0.0.1/", "webhook_url_not_allowed"),
    ],
)
def test_bad_urls_are_refused_with_their_code(url: str, code: str) -> None:
    with pytest.raises(DestinationRefused) as caught:
        destinations.resolve_destination(url, allow_private=False)
    assert caught.value.code == code
    assert caught.value.status_code == 422


def test_a_name_with_one_private_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(destinations, "resolve", lambda host, port: ["93.184.215.14", "10.0.0.9"])
    with pytest.raises(DestinationRefused) as caught:
        destinations.resolve_destination("https://hooks.example.com/x", allow_private=False)
    assert caught.value.message == (
        "webhooks cannot be sent to hooks.example.com: it resolves to 10.0.0.9, a private address"
    )
    assert "CREDITMETER_WEBHOOK_ALLOW_PRIVATE=true" in caught.value.detail


def plan(url: str) -> webhook_http.Plan:
    return webhook_http.Plan("wd_1", "we_1", 1, url, "evt_1", b'{"id":"evt_1"}', (new_secret(),))


def test_the_request_goes_to_the_checked_address_with_the_urls_host_and_tls_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([["93.184.215.14"], ["10.0.0.9"]])  # the second lookup: rebound inward
    monkeypatch.setattr(destinations, "resolve", lambda host, port: next(answers))
    sent: list[httpx.Request] = []

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=b"ok", request=request)

    monkeypatch.setattr(httpx.Client, "send", send)
    settings = Settings(webhook_allow_private=False)
    result = webhook_http.send(plan("https://hooks.example.com:8443/in?x=1"), settings)
    assert (result.status_code, result.excerpt, result.error) == (200, "ok", None)
    [request] = sent
    assert str(request.url) == "https://93.184.215.14:8443/in?x=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["webhook-id"] == "evt_1"
    # the same endpoint a moment later, its name now pointing inward: nothing is sent
    rebound = webhook_http.send(plan("https://hooks.example.com:8443/in?x=1"), settings)
    assert rebound.status_code is None
    assert rebound.error is not None
    assert rebound.error.startswith("webhook_url_not_allowed: ")
    assert len(sent) == 1


def test_the_next_address_is_tried_only_when_no_connection_could_be_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        destinations, "resolve", lambda host, port: ["93.184.215.14", "93.184.215.15"]
    )
    tried: list[str] = []

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        tried.append(request.url.host)
        if len(tried) == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(204, request=request)

    monkeypatch.setattr(httpx.Client, "send", send)
    result = webhook_http.send(plan("http://hooks.example.com/in"), Settings())
    assert tried == ["93.184.215.14", "93.184.215.15"]
    assert result.status_code == 204
    assert result.succeeded
