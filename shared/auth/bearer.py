"""The mechanism: ``Authorization: Bearer <token>`` on every request, on or off per setting.

``FAASPIPE_AUTH`` = ``on`` | ``off`` | ``auto`` (default). ``auto`` follows the bind address,
as the issue asks: a listener on loopback only is reachable from this machine alone, so auth is
off; any other address turns it on. localdev binds every listener to 127.0.0.1, so auth is off
unless ``FAASPIPE_AUTH=on``. On the cluster Knative's ``authentication-oidc`` flag plays this
role (rendered ``config-features``).

A workload finds its own token in ``$FAASPIPE_AUTH_TOKEN_DIR/<its function>.jwt`` (written by
the stack at ``up``; on the cluster the ServiceAccount token Kubernetes projects): read on each
use, so a refreshed file is picked up without a restart.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path

from shared.auth.exceptions import Unauthenticated
from shared.auth.tokens import Claims, TokenVerifier

AUTH_ENV = "FAASPIPE_AUTH"
AUTH_CHOICES = ("auto", "on", "off")
TOKEN_DIR_ENV = "FAASPIPE_AUTH_TOKEN_DIR"
# Set by the gateway on a forwarded request: the verified subject of the caller. The gateway
# drops any value a client sends, so a function may trust it (when auth is on).
SUBJECT_HEADER = "X-Faaspipe-Subject"


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_enabled(setting: str | None, bind_host: str) -> bool:
    """``on``/``off`` as said; ``auto`` (or unset): on unless bound to loopback only."""
    value = (setting or "auto").strip().lower()
    if value not in AUTH_CHOICES:
        raise ValueError(f"{AUTH_ENV} must be one of {AUTH_CHOICES}, got {setting!r}")
    if value == "auto":
        return not is_loopback(bind_host)
    return value == "on"


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of an ``Authorization: Bearer`` header; :class:`Unauthenticated` without one."""
    value = headers.get("Authorization") or headers.get("authorization")
    if not value:
        raise Unauthenticated("no bearer token: send Authorization: Bearer <token>")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def authenticate(headers: Mapping[str, str], verifier: TokenVerifier) -> Claims:
    return verifier.verify(bearer_token(headers))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def own_token(env: Mapping[str, str] | None = None) -> str | None:
    """This workload's token, if the platform gave it one."""
    env = os.environ if env is None else env
    directory, function = env.get(TOKEN_DIR_ENV), env.get("FAASPIPE_FUNCTION")
    if not directory or not function:
        return None
    try:
        return (Path(directory) / f"{function}.jwt").read_text().strip() or None
    except OSError:
        return None


def own_authorization(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"Authorization": "Bearer …"}`` with this workload's token, or nothing without one."""
    token = own_token(env)
    return bearer(token) if token else {}
