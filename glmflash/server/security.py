"""Who may call: API keys or HS256 JWTs on /v1, a client address allow-list, a body size limit."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import os

import jwt

from ..errors import InvalidRequestError
from .errors import error_body


class Authenticator:
    """Checks `Authorization: Bearer ...` against the keys and/or JWT secret in the settings."""

    def __init__(self, api_keys: str, jwt_secret: str):
        self.keys = _read_keys(api_keys)
        self.jwt_secret = jwt_secret
        self.enabled = bool(self.keys or jwt_secret)

    def identify(self, authorization: str | None) -> str | None:
        """The caller's id for the audit log ("key-1a2b3c4d", "jwt:alice"), or None when refused."""
        if not self.enabled:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip()
        for key in self.keys:
            if hmac.compare_digest(key.encode(), token.encode()):
                return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]
        if self.jwt_secret and token.count(".") == 2:
            try:
                claims = jwt.decode(
                    token, self.jwt_secret, algorithms=["HS256"], options={"require": ["exp"]}
                )
            except jwt.PyJWTError:
                return None
            return f"jwt:{claims.get('sub', 'unknown')}"
        return None


_VAR = "GLMFLASH_API_KEYS"


def _read_keys(value: str) -> list[str]:
    """Keys from a comma list or a file. A file that is missing or holds no key is an error, never
    an open door."""
    value = value.strip()
    if not value:
        return []
    if os.path.isfile(value):
        with open(value) as f:
            lines = [line.strip() for line in f]
        keys = [line for line in lines if line and not line.startswith("#")]
        if not keys:
            raise InvalidRequestError(
                f"GLMFLASH_API_KEYS file {value} holds no key.", param="GLMFLASH_API_KEYS"
            )
        return keys
    if value.startswith(("/", "./", "../", "~")):
        raise InvalidRequestError(
            f"GLMFLASH_API_KEYS looks like a file path, but {value} does not exist.",
            param="GLMFLASH_API_KEYS",
        )
    return [part.strip() for part in value.split(",") if part.strip()]


class ClientAllowList:
    def __init__(self, cidrs):
        self.networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]

    def allows(self, host: str | None) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        return any(address in net for net in self.networks)


PROBES = ("/health", "/ready")


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """ASGI: refuse clients outside the allow-list (403) and bodies over the limit (413).

    A declared Content-Length over the limit is refused before any of the body is read; a
    chunked body is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app, *, max_body_bytes: int, allow_list: ClientAllowList):
        self.app, self.max_body_bytes, self.allow_list = app, max_body_bytes, allow_list

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or (None, None))[0]
        # Health probes (a container's HEALTHCHECK, a balancer) reveal nothing and always pass.
        if scope.get("path") not in PROBES and not self.allow_list.allows(client):
            return await _reply(
                send, 403, "Your address is not allowed to use this server.", "ip_not_allowed"
            )
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode()
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _reply(send, 413, self._too_large(), "request_too_large")
        received = 0
        too_large = False

        async def counting_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message):
            if not too_large:  # once the body is too large, the app's own answer is replaced
                await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if too_large:
            await _reply(send, 413, self._too_large(), "request_too_large")

    def _too_large(self) -> str:
        return f"The request body is over the {self.max_body_bytes:,}-byte limit (GLMFLASH_MAX_BODY_BYTES)."


async def _reply(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
