"""Signed tokens: compact JWTs (RFC 7519) with HS256 (RFC 7518 §3.2), from the standard library.

Claims used: ``sub`` (the identity: ``system:serviceaccount:<namespace>:<name>`` for workloads,
as Kubernetes service-account tokens and hence Knative's OIDC subjects look, ``user:<name>``
for people), ``aud``, ``iat``, ``exp``, ``iss``. Verification sits behind the small
:class:`TokenVerifier` protocol, so an OIDC verifier (JWKS, RS256) can replace the shared-key one
without touching the ingress, the gateway or the control API.

Why HS256 and not RS256: on one machine the stack is both issuer and verifier and keeps the key
in its state directory (mode 0600); no new dependency is needed. On the cluster the tokens are
Kubernetes' own (projected service-account tokens, verified by Knative against the API
server's OIDC discovery), so this module is localdev's stand-in for that issuer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.auth.exceptions import Unauthenticated

ISSUER = "faaspipe-localdev"
AUDIENCE = "faaspipe"  # one audience for the local platform's ingress, gateway and control API
LEEWAY_S = 30.0  # clock skew tolerated on exp/iat (processes on one host: small)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    """A verified token's claims."""

    sub: str
    aud: tuple[str, ...]
    exp: float
    iat: float
    iss: str


def mint(
    key: bytes, subject: str, *, audience: str = AUDIENCE, ttl_s: float = 3600.0, now: float | None = None
) -> str:
    """A token for ``subject``, valid ``ttl_s`` seconds from ``now``."""
    issued = time.time() if now is None else now
    header = {"alg": "HS256", "typ": "JWT"}
    payload = {"sub": subject, "aud": audience, "iat": int(issued), "exp": int(issued + ttl_s), "iss": ISSUER}
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    )
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


class TokenVerifier(Protocol):
    """Checks a bearer token and returns its claims, or raises :class:`Unauthenticated`."""

    def verify(self, token: str) -> Claims: ...


class HmacVerifier:
    """Verifies HS256 tokens signed with ``key`` for ``audience``."""

    def __init__(self, key: bytes, audience: str = AUDIENCE, leeway_s: float = LEEWAY_S) -> None:
        self._key = key
        self.audience = audience
        self.leeway_s = leeway_s

    def verify(self, token: str) -> Claims:
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("malformed token: expected a JWT (header.payload.signature)")
        try:
            header = json.loads(_unb64(parts[0]))
            payload: dict[str, Any] = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, TypeError) as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise Unauthenticated("unsupported token algorithm (HS256 expected)")  # never "none"
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise Unauthenticated("token signature does not verify")
        if not isinstance(payload, dict):
            raise Unauthenticated("malformed token payload")
        aud = payload.get("aud")
        audiences = tuple(aud) if isinstance(aud, list) else (aud,) if isinstance(aud, str) else ()
        if self.audience not in audiences:
            raise Unauthenticated(f"token audience {list(audiences)} does not include {self.audience!r}")
        now = time.time()
        exp, iat = payload.get("exp"), payload.get("iat", 0)
        if not isinstance(exp, int | float) or now > exp + self.leeway_s:
            raise Unauthenticated("token expired")
        if not isinstance(iat, int | float) or iat > now + self.leeway_s:
            raise Unauthenticated("token issued in the future")
        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("token has no subject")
        return Claims(sub, audiences, float(exp), float(iat), str(payload.get("iss", "")))


def load_or_create_key(path: Path) -> bytes:
    """The signing key kept at ``path`` (32 random bytes, hex, mode 0600), created on first use.

    Created with ``O_EXCL`` so two processes racing at start-up end with the same key."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    for _ in range(50):  # the creator may not have written yet
        text = path.read_text().strip()
        if text:
            return bytes.fromhex(text)
        time.sleep(0.01)
    raise RuntimeError(f"signing key file {path} is empty")
