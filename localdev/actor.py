"""Who acts through the command line, as recorded with a manual action (a rollout decided by
hand, a dead letter replayed), and the token it acts with.

Without authentication this is ``cli:<user>@<host>``, the operating-system user. With auth on
(``FAASPIPE_AUTH``, shared/auth) the CLI acts as ``user:<user>``: the subject of the bearer
token it sends to the ingress and the control API, minted by the stack's local issuer. The
audit record then names the authenticated subject, the one the ingress checked the manual
decision against (its EventPolicy ``faaspipe-users``).
"""

from __future__ import annotations

import getpass
import socket

from localdev.config import StackConfig
from shared.auth.bearer import bearer
from shared.auth.identity import user_subject


def _stack(config: StackConfig | None) -> StackConfig:
    if config is not None:
        return config
    config = StackConfig.from_env()
    if (config.state_dir / "stack.json").exists():
        return StackConfig.load(config.state_dir)
    return config


def cli_subject() -> str:
    """The CLI user's subject when auth is on."""
    return user_subject(getpass.getuser())


def cli_actor(config: StackConfig | None = None) -> str:
    """Who a manual action is recorded as: the token's subject with auth on."""
    if _stack(config).auth.enabled:
        return cli_subject()
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def cli_authorization(config: StackConfig | None = None) -> dict[str, str]:
    """The CLI's ``Authorization`` header (auth on), or nothing."""
    stack = _stack(config)
    if not stack.auth.enabled:
        return {}
    return bearer(stack.auth.mint(cli_subject()))
