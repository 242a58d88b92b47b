"""The local stack as its own token issuer: the signing key in the state directory, tokens for
the pipeline's workloads, the dispatcher's trigger identities and the CLI's user.

On the cluster none of this exists: Kubernetes issues service-account tokens and Knative
verifies them; the rendered manifests carry no key and no token (``localdev/render/auth.py``)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from shared.auth.identity import function_subject
from shared.auth.tokens import HmacVerifier, load_or_create_key, mint
from shared.topology import Topology

WORKLOAD_TTL_S = 30 * 24 * 3600.0  # workload tokens are re-minted at every `up`
CLI_TTL_S = 600.0


class StackAuth:
    """Key and tokens of one local stack (``<state>/auth``)."""

    def __init__(self, state_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.dir = Path(state_dir) / "auth"
        self.key_file = self.dir / "signing.key"
        self.token_dir = self.dir / "tokens"

    def key(self) -> bytes:
        return load_or_create_key(self.key_file)

    def verifier(self) -> HmacVerifier:
        return HmacVerifier(self.key())

    def mint(self, subject: str, ttl_s: float = CLI_TTL_S) -> str:
        return mint(self.key(), subject, ttl_s=ttl_s)

    def write_workload_tokens(self, topology: Topology) -> None:
        """One token per function, for its own subject, where its replicas read it."""
        self.token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for fn in topology.functions.values():
            path = self.token_dir / f"{fn.name}.jwt"
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.mint(function_subject(fn), WORKLOAD_TTL_S))
            tmp.replace(path)


class TokenSource:
    """A token for one subject, re-minted once half its lifetime has passed."""

    def __init__(self, key: bytes, subject: str, ttl_s: float = 3600.0) -> None:
        self.key, self.subject, self.ttl_s = key, subject, ttl_s
        self._token, self._minted = "", 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            now = time.time()
            if not self._token or now - self._minted > self.ttl_s / 2:
                self._token, self._minted = mint(self.key, self.subject, ttl_s=self.ttl_s, now=now), now
            return self._token
