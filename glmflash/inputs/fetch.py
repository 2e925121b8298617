"""Fetching http(s) image URLs without letting a client reach our own network (SSRF guard).

Every hop (the first request and each redirect) is resolved first; loopback, private, link-local,
multicast and reserved addresses are refused unless a network is explicitly trusted, and the
connection goes to the address that was checked, so DNS cannot change it in between.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from urllib.parse import urljoin, urlsplit

from ..errors import ImageError

MAX_REDIRECTS = 3


def fetch_url(url: str, *, max_bytes: int, timeout: float, allowed_networks: tuple[str, ...] = ()) -> bytes:
    """GET `url` and return its body, with size, time, redirect and address limits."""
    trusted = [ipaddress.ip_network(net, strict=False) for net in allowed_networks]
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ImageError(f"Malformed image URL {url[:80]!r}.") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageError(f"Only http(s) image URLs are accepted, not {url[:80]!r}.")
        address = resolve_public(parts.hostname, port, trusted)
        conn = _connection(parts.scheme, parts.hostname, address, port, _left(deadline))
        # A server trickling bytes never trips a per-read timeout: a watchdog enforces the total.
        sockets: list = []
        watchdog = threading.Timer(_left(deadline), _abort, args=(sockets,))
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()
            sockets.append(conn.sock)  # kept: http.client lets go of it once the body is streaming
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"Host": parts.netloc, "User-Agent": "glmflash"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise ImageError("The image URL redirected without a location.")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise ImageError(f"The image URL answered HTTP {response.status}.")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise ImageError(f"The image at the URL is over the {max_bytes:,}-byte limit.")
            return _read_limited(response, max_bytes, deadline)
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise ImageError("Fetching the image URL took too long.") from None
            raise ImageError(f"Could not fetch the image URL: {exc}") from None
        finally:
            watchdog.cancel()
            conn.close()
    raise ImageError(f"The image URL redirected more than {MAX_REDIRECTS} times.")


def resolve_public(host: str, port: int, trusted=()) -> str:
    """Resolve `host` and return one address, refusing any non-public one that is not trusted."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise ImageError(f"Cannot resolve the image URL's host {host[:80]!r}.") from None
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        ip = _effective(ipaddress.ip_address(address.split("%")[0]))
        if any(ip in net for net in trusted):
            continue
        if not ip.is_global or ip.is_multicast or any(ip in net for net in _TUNNELS):
            raise ImageError(
                f"Refusing to fetch an image from {host!r}: it resolves to a private, loopback, "
                "link-local or reserved address."
            )
    return addresses[0]


_TUNNELS = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96")]


def _effective(ip):
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), else the address."""
    if ip.version == 6:
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip in _TUNNELS[0] or ip in _TUNNELS[3]:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _abort(sockets: list) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _connection(scheme: str, host: str, address: str, port: int, timeout: float):
    if scheme == "http":
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    else:
        context = ssl.create_default_context()
        conn = _PinnedHTTPSConnection(host, address, port, timeout=timeout, context=context)
    return conn


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a checked address while verifying the certificate for the real host name."""

    def __init__(self, host: str, address: str, port: int, **kwargs):
        super().__init__(host, port, **kwargs)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _read_limited(response, max_bytes: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if time.monotonic() > deadline:
            raise ImageError("Fetching the image URL took too long.")
        chunk = response.read(65536)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise ImageError(f"The image at the URL is over the {max_bytes:,}-byte limit.")
        chunks.append(chunk)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageError("Fetching the image URL took too long.")
    return left
