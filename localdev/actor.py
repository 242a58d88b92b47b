"""Who acts through the command line, as recorded with a manual action (a rollout decided by
hand, a dead letter replayed): ``cli:<user>@<host>``. Without authentication this is the
operating-system user; a token's subject would replace it."""

from __future__ import annotations

import getpass
import socket


def cli_actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"
