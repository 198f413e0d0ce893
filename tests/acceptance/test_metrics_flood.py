"""A real daemon under a descriptor limit keeps working while a neighbour floods its
metrics port with idle connections.

The daemon runs with ``RLIMIT_NOFILE`` 200; 300 clients connect to its metrics port
and send nothing, and every one the server closes reconnects at once. Without a cap on
the server's connections those sockets alone would take every descriptor the daemon
may open, and its database connections would fail next (issue 10 measured that with
286 clients). With the cap, ``/healthz`` keeps answering 200 promptly, tasks keep
completing, and the daemon's descriptor count stays far below its limit.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from runner.http import DEFAULT_MAX_CONNECTIONS
from tests.harness import DaemonProcess, daemons, query, wait_for_daemons, wait_until

pytestmark = pytest.mark.slow

FD_LIMIT = 200
CLIENTS = 300
FLOOD_SECONDS = 8.0
TASKS = 20


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _metrics_url(daemon: DaemonProcess) -> str | None:
    for line in daemon.log_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "daemon_started":
            return str(event["metrics_url"])
    return None


def _open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class IdleFlood:
    """``CLIENTS`` connections that never send a byte, on a thread; each one the server
    closes is replaced by a new one."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-flood", daemon=True)
        self.connected = 0  # at once, at most CLIENTS
        self.closed_by_server = 0

    def __enter__(self) -> IdleFlood:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _connect(self) -> None:
        try:
            client = socket.create_connection(self._address, timeout=5)
        except OSError:
            return  # the listen queue was full: the next round tries again
        client.setblocking(False)
        self._selector.register(client, selectors.EVENT_READ)
        self.connected += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            while self.connected < CLIENTS and not self._stop.is_set():
                self._connect()
            for key, _ in self._selector.select(timeout=0.05):
                client: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    gone = client.recv(1) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    self._selector.unregister(client)
                    client.close()
                    self.connected -= 1
                    self.closed_by_server += 1


def test_idle_connection_flood_leaves_health_and_work_unaffected(
    db_url: str, tmp_path: Path
) -> None:
    query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES ('n', 'noop') RETURNING id")
    with daemons(db_url, tmp_path, preexec_fn=_limit_descriptors) as (daemon,):
        url = wait_until(lambda: _metrics_url(daemon), message="the metrics address")
        wait_for_daemons(db_url, 1)
        baseline = _open_descriptors(daemon.pid)
        assert baseline + CLIENTS > FD_LIMIT, "without a cap the flood would exhaust the limit"
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        with IdleFlood((parts.hostname, parts.port)) as flood, \
                httpx.Client(timeout=5) as http:
            wait_until(lambda: flood.closed_by_server >= CLIENTS, timeout=30,
                       message="the server closing idle clients")
            task_ids = [row[0] for row in query(
                db_url, "SELECT enqueue_agent_task('n') FROM generate_series(1, %s)", (TASKS,))]
            probes: list[tuple[int, float]] = []
            flooding: list[int] = []  # the flood's open connections at each probe
            most_descriptors = 0
            ends = time.monotonic() + FLOOD_SECONDS
            while time.monotonic() < ends:
                began = time.monotonic()
                status = http.get(f"{url}/healthz").status_code
                probes.append((status, time.monotonic() - began))
                flooding.append(flood.connected)
                most_descriptors = max(most_descriptors, _open_descriptors(daemon.pid))
                time.sleep(0.25)
            completed = query(db_url, "SELECT count(*) FROM agent_tasks "
                                      "WHERE status = 'completed' AND id = ANY(%s)", (task_ids,))
            replaced = flood.closed_by_server
        assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
        assert http_ok(url)

    print(f"baseline {baseline} most {most_descriptors} replaced {replaced} "
          f"flooding {flooding} probes {[round(s, 3) for _, s in probes]}")
    # The flood was real: more clients connected than the limit, over and over.
    assert min(flooding) >= FD_LIMIT, flooding
    assert replaced >= 2 * CLIENTS
    # /healthz answered 200 every time, and promptly, while they were connected.
    assert probes and {status for status, _ in probes} == {200}, probes
    assert max(seconds for _, seconds in probes) < 2.0, probes
    # The work went on.
    assert completed[0][0] == TASKS
    # The cap held: the daemon never came near its descriptor limit.
    assert most_descriptors <= baseline + DEFAULT_MAX_CONNECTIONS + 10 < FD_LIMIT, (
        baseline, most_descriptors)
    log = daemon.log_text()
    assert "Too many open files" not in log
    assert '"accept_failed"' not in log
    assert '"event": "metrics_connections_shed"' in log


def http_ok(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
