"""Fetching http(s) image URLs without letting a client reach our own network (SSRF guard).

Every hop (the first request and each redirect) is resolved first; loopback, private, link-local,
multicast and reserved addresses are refused unless a network is explicitly trusted, and the
connection goes to the address that was checked, so DNS cannot change it in between.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urljoin, urlsplit

from .errors import ImageError

MAX_REDIRECTS = 3


def fetch_url(url: str, *, max_bytes: int, timeout: float, allowed_networks: tuple[str, ...] = ()) -> bytes:
    """GET `url` and return its body, with size, time, redirect and address limits."""
    trusted = [ipaddress.ip_network(net, strict=False) for net in allowed_networks]
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ImageError(f"Only http(s) image URLs are accepted, not {url[:80]!r}.")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = resolve_public(parts.hostname, port, trusted)
        conn = _connection(parts.scheme, parts.hostname, address, port, _left(deadline))
        try:
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
            raise ImageError(f"Could not fetch the image URL: {exc}") from None
        finally:
            conn.close()
    raise ImageError(f"The image URL redirected more than {MAX_REDIRECTS} times.")


def resolve_public(host: str, port: int, trusted=()) -> str:
    """Resolve `host` and return one address, refusing any non-public one that is not trusted."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ImageError(f"Cannot resolve the image URL's host {host!r}.") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if getattr(ip, "ipv4_mapped", None):
            ip = ip.ipv4_mapped
        if any(ip in net for net in trusted):
            continue
        if not ip.is_global or ip.is_multicast:
            raise ImageError(
                f"Refusing to fetch an image from {host!r}: it resolves to a private, loopback, "
                "link-local or reserved address."
            )
    return addresses[0]


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
    chunks, total = [], 0
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
