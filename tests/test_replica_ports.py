"""Replica ports come from the stack's own range, never from the kernel's ephemeral range."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from localdev.config import DEFAULT_PORT_BASE, StackConfig
from localdev.processes import pick_port
from tests.conftest import TEST_PORT_BASE


def _ephemeral() -> range:
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


@pytest.mark.parametrize(
    "base", [DEFAULT_PORT_BASE, TEST_PORT_BASE, TEST_PORT_BASE + 500, TEST_PORT_BASE + 1000]
)
def test_the_replica_range_is_the_stacks_and_outside_the_ephemeral_range(tmp_path: Path, base: int) -> None:
    """A port bound to 0, closed and bound again by gunicorn could be taken in between by any
    outgoing connection (it failed a stack's start); ports the stack owns cannot."""
    config = StackConfig(tmp_path, port_base=base)
    ports = config.replica_ports
    assert not set(ports) & set(config.ports.values())
    assert ports.start > max(config.ports.values())
    ephemeral = _ephemeral()
    assert ports.stop <= ephemeral.start or ports.start >= ephemeral.stop


def test_pick_port_skips_claimed_and_listening_ports(tmp_path: Path) -> None:
    config = StackConfig(tmp_path, port_base=TEST_PORT_BASE + 2500)  # no test stack is there
    first = config.replica_ports.start
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first + 1))
        busy.listen()
        assert pick_port(config.replica_ports, taken={first}) == first + 2
    assert pick_port(config.replica_ports, taken=set()) == first
    with pytest.raises(RuntimeError, match="no free port"):
        pick_port(range(first, first + 1), taken={first})
