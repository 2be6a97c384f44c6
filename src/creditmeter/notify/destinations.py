"""Where a webhook may be sent: http(s) URLs whose host resolves only to public addresses.

A webhook URL is chosen by a customer, and the worker that sends to it sits inside the operator's
network; an unchecked URL would let a customer make that worker call internal services (SSRF). So:

- the URL must be ``http`` or ``https`` with a host and no credentials (``user:pass@``);
- every address its host resolves to must be public: loopback, private, link-local, multicast,
  reserved, unspecified, shared (CGNAT) and other non-global addresses are refused, and so are IPv6
  forms that embed such an IPv4 address (mapped, 6to4, Teredo) — unless the operator sets
  ``CREDITMETER_WEBHOOK_ALLOW_PRIVATE=true`` (one-box setups and tests).

The check runs when an endpoint is created or its URL changed (422 ``webhook_url_not_allowed``),
and again before every attempt: the host is resolved anew and the request is sent to one of the
addresses just checked (:func:`resolve_destination`), so a DNS answer that changes after the check
(DNS rebinding) cannot steer a request to an internal address.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from creditmeter.errors import InvalidRequest

ALLOW_PRIVATE_SETTING = "CREDITMETER_WEBHOOK_ALLOW_PRIVATE"
MAX_URL_LENGTH = 2000

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(InvalidRequest):
    """A URL (or what its host resolves to) that webhooks may not be sent to: a 422 whose ``code``
    says why (``webhook_url_invalid``, ``webhook_url_not_allowed``, ``webhook_url_unresolvable``)
    and whose detail names the setting an operator can change (:data:`ALLOW_PRIVATE_SETTING`)."""

    def __init__(self, code: str, message: str) -> None:
        detail = f"url: {message}"
        if code == "webhook_url_not_allowed":
            detail += (
                "; webhook URLs must reach a public address (an operator can allow private and "
                f"loopback addresses with {ALLOW_PRIVATE_SETTING}=true)"
            )
        super().__init__(
            detail, code=code, errors=[{"field": "url", "type": code, "message": message}]
        )
        self.message = message


@dataclass(frozen=True)
class Destination:
    """A checked URL: its parts and the addresses it may be sent to, in resolver order."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def parse(url: str) -> SplitResult:
    """The URL's parts, or :class:`DestinationRefused` (``webhook_url_invalid``) for anything but an
    absolute http(s) URL with a host and without credentials."""
    if len(url) > MAX_URL_LENGTH:
        raise DestinationRefused("webhook_url_invalid", f"the URL is longer than {MAX_URL_LENGTH}")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise DestinationRefused("webhook_url_invalid", "the URL contains spaces or control bytes")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise DestinationRefused(
            "webhook_url_invalid", f"the URL cannot be parsed: {exc}"
        ) from None
    if parts.scheme not in {"http", "https"}:
        raise DestinationRefused(
            "webhook_url_invalid",
            f"the URL must start with https:// or http:// (got {parts.scheme or 'no'} scheme)",
        )
    if not parts.hostname:
        raise DestinationRefused("webhook_url_invalid", "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused(
            "webhook_url_invalid",
            "the URL must not carry credentials (user:password@); verify the signature instead",
        )
    if parts.fragment:
        raise DestinationRefused("webhook_url_invalid", "the URL must not have a #fragment")
    return parts


def refused_reason(address: IPAddress) -> str | None:
    """What kind of address ``address`` is, when webhooks may not go to it (``"a loopback
    address"``); None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None:
            reason = refused_reason(embedded)
            if reason is not None:
                return f"{reason} ({embedded}, embedded)"
    for flag, kind in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, flag):
            return kind
    if not address.is_global:
        return "not a public address"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (an IP literal is itself), without duplicates, in the
    resolver's order; :class:`DestinationRefused` (``webhook_url_unresolvable``) when it does not."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return [str(literal)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise DestinationRefused(
            "webhook_url_unresolvable", f"the host {host} does not resolve ({exc})"
        ) from None
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))
        if address not in found:
            found.append(address)
    if not found:
        raise DestinationRefused("webhook_url_unresolvable", f"the host {host} has no address")
    return found


def resolve_destination(url: str, *, allow_private: bool) -> Destination:
    """Parse ``url``, resolve its host now and check every address it resolves to (all of them: a
    name with one internal address among public ones is refused). Raises
    :class:`DestinationRefused`."""
    parts = parse(url)
    host = parts.hostname
    assert host is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            kind = refused_reason(ipaddress.ip_address(address))
            if kind is not None:
                what = f"it is {kind}" if _is_ip(host) else f"it resolves to {address}, {kind}"
                raise DestinationRefused(
                    "webhook_url_not_allowed", f"webhooks cannot be sent to {host}: {what}"
                )
    return Destination(url, parts.scheme, host, port, tuple(addresses))


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL, if webhooks may be sent to it now; else :class:`DestinationRefused` (a 422)."""
    resolve_destination(url, allow_private=allow_private)
    return url
