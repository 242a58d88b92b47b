"""Refusals of the auth layer, each carrying the HTTP status it maps to.

Knative Eventing's verifier (``pkg/auth/verifier.go``) answers a request whose token is missing
or invalid with ``401 Unauthorized`` and an authenticated request that no applying
``EventPolicy`` allows with ``403 Forbidden``; these two classes keep that distinction."""

from __future__ import annotations


class AuthError(Exception):
    """Base of every refusal; ``status`` is the HTTP status to answer with."""

    status = 401
    outcome = "unauthenticated"


class Unauthenticated(AuthError):
    """No token, a malformed one, a bad signature, the wrong audience or an expired token."""

    status = 401
    outcome = "unauthenticated"


class Forbidden(AuthError):
    """A valid token whose subject may not do this (no policy allows it)."""

    status = 403
    outcome = "forbidden"
