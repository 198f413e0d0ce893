"""sd_notify against real Unix datagram sockets, the way systemd listens."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A bound datagram socket in a directory, and the environment naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": str(path)}


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    name = f"agent-runner-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        yield sock, {"NOTIFY_SOCKET": "@" + name}


def test_notify_sends_the_state_as_one_datagram(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = listener
    assert sdnotify.notify("READY=1\nSTATUS=up", env) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_notify_reaches_an_abstract_socket(
    abstract_listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = abstract_listener
    assert sdnotify.notify("WATCHDOG=1", env) is True
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_helpers_send_the_protocol_assignments(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = listener
    assert sdnotify.ready(env)
    assert sdnotify.watchdog(env)
    assert sdnotify.status("draining 2 tasks\nSTOPPING=1", env)
    assert sdnotify.stopping(env)
    received = [sock.recv(4096) for _ in range(4)]
    assert received == [
        b"READY=1",
        b"WATCHDOG=1",
        b"STATUS=draining 2 tasks STOPPING=1",
        b"STOPPING=1",
    ]


def test_default_environment_is_read_at_call_time(
    listener: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = listener
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert sdnotify.ready() is True
    assert sock.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234"])
def test_notify_without_a_usable_socket_is_a_no_op(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert sdnotify.notify("READY=1", env) is False


def test_notify_to_a_vanished_socket_returns_false(tmp_path: Path) -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_when_ours(
    env: dict[str, str], expected: float | None
) -> None:
    assert sdnotify.watchdog_interval(env) == expected
