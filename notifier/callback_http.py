"""Where a publisher's callback may go (the SSRF rules) and the one request that sends it.

A callback URL is set by an operator, but its host is resolved by DNS that its owner
controls, so every rule is checked on the addresses at send time, and the request goes
to the address that was checked (a second lookup could answer differently: DNS
rebinding). The rules, in order:

* the URL is ``https`` (``http`` only with ``allow_http``, and only to an address in
  ``allowed_networks``), with a host, and without user:password;
* every address the host resolves to is public, or inside ``allowed_networks``: never
  loopback, link-local, multicast, unspecified, private or otherwise reserved by default;
* cloud metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200) only if an
  allowed network names that very address (a /32 or /128), never through a wider range;
* redirects are not followed (a 3xx is a failed try).

The transport's outcomes become :mod:`notifier.adapter_http`'s failures (the project's one
HTTP seam): a refused destination is a :class:`DestinationRefused`.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from notifier.adapter import PermanentFailure
from notifier.adapter_http import RetryAfterHook, request_sync

__all__ = [
    "METADATA_ADDRESSES",
    "Address",
    "DestinationPolicy",
    "DestinationRefused",
    "HostClients",
    "Resolver",
    "post_callback",
    "system_resolver",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses to check (and connect to, the first one).
Resolver = Callable[[str, int], list[Address]]

REFUSED = "destination-refused"

METADATA_ADDRESSES: frozenset[Address] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
    }
)


class DestinationRefused(PermanentFailure):
    """A callback URL or address the SSRF rules refuse (the reason says which rule)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, code=REFUSED, operator_alert=True)


def system_resolver(host: str, port: int) -> list[Address]:
    """The host's addresses from the system resolver, in its order, without repeats."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DestinationRefused(f"the callback host does not resolve ({exc})") from None
    found: list[Address] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def _plain(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class DestinationPolicy:
    """The SSRF rules of one deployment (``NOTIFIER_CALLBACKS__ALLOWED_NETWORKS``...)."""

    allowed_networks: tuple[Network, ...] = ()
    allow_http: bool = False
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def of(
        cls, networks: Iterable[str], *, allow_http: bool, resolver: Resolver | None = None
    ) -> DestinationPolicy:
        parsed = tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks)
        return cls(parsed, allow_http, resolver or system_resolver)

    def _allowed(self, address: Address) -> bool:
        return any(address in network for network in self.allowed_networks)

    def address_refusal(self, address: Address) -> str | None:
        """Why a callback may not go to ``address``, or None if it may."""
        address = _plain(address)
        if address in METADATA_ADDRESSES:
            named = any(
                network.num_addresses == 1 and address in network
                for network in self.allowed_networks
            )
            return None if named else f"{address} is a cloud metadata address"
        if self._allowed(address):
            return None
        for refused, what in (
            (address.is_unspecified, "unspecified"),
            (address.is_loopback, "loopback"),
            (address.is_link_local, "link-local"),
            (address.is_multicast, "multicast"),
        ):
            if refused:
                return f"{address} is a {what} address"
        if not address.is_global:
            return f"{address} is a private or reserved address (not in allowed_networks)"
        return None

    def check_url(self, url: str) -> httpx.URL:
        """The URL parsed, if its form is acceptable (scheme, host, no credentials)."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise DestinationRefused("the callback URL is not a valid URL") from None
        if parsed.scheme not in ("https", "http"):
            raise DestinationRefused("a callback URL is https (or http to an allowed network)")
        if parsed.scheme == "http" and not self.allow_http:
            raise DestinationRefused(
                "a callback URL must be https (plain http is allowed only to an address in "
                "allowed_networks, with allow_http)"
            )
        if not parsed.host:
            raise DestinationRefused("the callback URL has no host")
        if parsed.userinfo:
            raise DestinationRefused("the callback URL must not hold a user name or password")
        return parsed

    def resolve(self, url: httpx.URL) -> Address:
        """The address to send to: every address of the host checked, the first taken."""
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = self.resolver(url.host, port)
        if not addresses:
            raise DestinationRefused("the callback host has no address")
        for address in addresses:
            refusal = self.address_refusal(address)
            if refusal is not None:
                raise DestinationRefused(f"callback refused: {refusal}")
            if url.scheme == "http" and not self._allowed(_plain(address)):
                raise DestinationRefused(
                    f"plain http only to an address in allowed_networks, not {address}"
                )
        return addresses[0]


class HostClients:
    """One pooled :class:`httpx.Client` per callback host name.

    A request goes to the checked IP address, so httpx pools its connection under that
    address; a connection whose TLS was verified for one name must not carry a callback
    for another name served from the same address. Each name gets its own pool; past
    ``max_hosts`` names, the least recently used pool is closed.
    """

    def __init__(self, max_hosts: int = 256, **options: Any) -> None:
        self.max_hosts = max_hosts
        self.options = options
        self._clients: OrderedDict[str, httpx.Client] = OrderedDict()
        self._lock = threading.Lock()

    def client(self, host: str) -> httpx.Client:
        with self._lock:
            found = self._clients.get(host)
            if found is not None:
                self._clients.move_to_end(host)
                return found
            found = self._clients[host] = httpx.Client(**self.options)
            while len(self._clients) > self.max_hosts:
                _, oldest = self._clients.popitem(last=False)
                oldest.close()  # a request still on it fails as a transport error: retried
            return found

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()

    def __enter__(self) -> HostClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_callback(
    client: httpx.Client | HostClients,
    policy: DestinationPolicy,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    retry_after_hook: RetryAfterHook | None = None,
) -> httpx.Response:
    """POST one signed callback to the checked address of ``url``.

    ``client`` is a :class:`HostClients` (the sender's), or a plain client used for one
    host name only (a pooled connection is reused by address, see :class:`HostClients`).

    Raises :class:`DestinationRefused` before any connection when a rule refuses the URL
    or any of its addresses, and the HTTP seam's :class:`~notifier.adapter.TemporaryFailure`
    on a transport error, a 429 or a 5xx (with the receiver's ``Retry-After``). Any other
    answer is returned: the caller reads 2xx as delivered, the rest as a failed try.
    """
    parsed = policy.check_url(url)
    address = policy.resolve(parsed)
    if isinstance(client, HostClients):
        client = client.client(parsed.host)
    # Connect to the address just checked; the Host header and TLS (SNI and the
    # certificate check) still name the host, so https verifies the real name.
    pinned = parsed.copy_with(host=str(address))
    host_header = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
    if ":" in parsed.host and parsed.port is None:
        host_header = f"[{parsed.host}]"
    elif ":" in parsed.host:
        host_header = f"[{parsed.host}]:{parsed.port}"
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return request_sync(
        client,
        "POST",
        pinned,
        provider="the callback receiver",
        retry_after_hook=retry_after_hook,
        content=body,
        headers={
            **headers,
            "host": host_header,
            "content-type": "application/json",
            "user-agent": "notifier-callbacks/1",
        },
        extensions=extensions,
        follow_redirects=False,
    )
