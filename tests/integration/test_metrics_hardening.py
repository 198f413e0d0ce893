"""The metrics server under a hostile neighbour: a connection cap, a head deadline.

In-process, against real sockets. The daemon-level version (several hundred idle
connections against a real daemon under a descriptor limit) is
tests/acceptance/test_metrics_flood.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from runner.http import DEFAULT_HEAD_TIMEOUT, DEFAULT_MAX_CONNECTIONS, MetricsServer
from tests.harness import await_until


async def healthy() -> None:
    pass


@pytest.fixture
async def capped() -> AsyncIterator[MetricsServer]:
    async with MetricsServer(healthy, port=0, max_connections=4) as server:
        yield server


async def idle_connection(server: MetricsServer) -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closed the connection (EOF, or a reset) within ``within`` s."""
    try:
        async with asyncio.timeout(within):
            return await reader.read() == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def test_the_defaults_are_the_documented_bounds() -> None:
    assert DEFAULT_MAX_CONNECTIONS == 64
    assert DEFAULT_HEAD_TIMEOUT <= 2.0


async def test_a_client_that_sends_nothing_is_dropped_after_the_head_timeout() -> None:
    async with MetricsServer(healthy, port=0) as server:
        reader, writer = await idle_connection(server)
        began = time.monotonic()
        assert await closed_by_server(reader, within=DEFAULT_HEAD_TIMEOUT + 2)
        assert DEFAULT_HEAD_TIMEOUT - 0.2 <= time.monotonic() - began <= DEFAULT_HEAD_TIMEOUT + 1
        writer.close()


async def test_trickling_the_head_does_not_extend_the_deadline() -> None:
    async with MetricsServer(healthy, port=0, head_timeout=0.6) as server:
        reader, writer = await idle_connection(server)
        began = time.monotonic()
        closed = False
        # A byte every 0.1 s: each would reset a per-read timeout, never the deadline.
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: yes":
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            if await closed_by_server(reader, within=0.1):
                closed = True
                break
        assert closed, "a trickling client kept its connection"
        assert time.monotonic() - began < 1.5
        writer.close()


async def test_at_the_cap_a_new_connection_replaces_the_oldest_idle_one(
    capped: MetricsServer,
) -> None:
    idle = [await idle_connection(capped) for _ in range(4)]
    await await_until(lambda: _true(capped.open_connections == 4), within=5,
                      message="four connections accepted")
    async with httpx.AsyncClient(timeout=5) as http:
        began = time.monotonic()
        response = await http.get(f"{capped.url}/healthz")
        assert (response.status_code, response.text) == (200, "ok\n")
        assert time.monotonic() - began < 1, "the probe waited for an idle client"
    oldest_reader, _ = idle[0]
    assert await closed_by_server(oldest_reader, within=1), "the oldest idle one was kept"
    assert capped.open_connections <= 4
    for _, writer in idle:
        writer.close()


async def test_a_crowd_of_idle_clients_never_holds_more_than_the_cap(
    capped: MetricsServer, caplog: pytest.LogCaptureFixture,
) -> None:
    crowd = []
    most = 0
    for _ in range(60):
        crowd.append(await idle_connection(capped))
        await asyncio.sleep(0)
        most = max(most, capped.open_connections)
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(5):
            assert (await http.get(f"{capped.url}/healthz")).status_code == 200
            assert (await http.get(f"{capped.url}/metrics")).status_code == 200
            most = max(most, capped.open_connections)
    assert most <= 4
    still_open = [reader for reader, _ in crowd if not await closed_by_server(reader, 0.01)]
    assert len(still_open) <= 4
    await capped.stop()  # flushes the shed counts
    # Logged at once, then at most once a minute (and at stop), not once per client.
    shed = [r for r in caplog.records if r.msg == "metrics_connections_shed"]
    assert 1 <= len(shed) <= 2
    assert {r.levelno for r in shed} == {logging.WARNING}
    assert sum(getattr(r, "replaced_idle", 0) for r in shed) >= 56
    for _, writer in crowd:
        writer.close()


async def test_when_every_connection_is_busy_new_ones_wait_their_turn() -> None:
    release = asyncio.Event()
    started = 0

    async def slow_check() -> None:
        nonlocal started
        started += 1
        await release.wait()

    async with MetricsServer(slow_check, port=0, max_connections=2,
                             health_timeout=10) as server:
        async with httpx.AsyncClient(timeout=10) as http:
            probes = [asyncio.create_task(http.get(f"{server.url}/healthz")) for _ in range(3)]
            await await_until(lambda: _true(started == 2), within=5, message="two busy probes")
            await asyncio.sleep(0.3)
            # The third waits in the listen queue: not accepted, not refused.
            assert (started, server.open_connections) == (2, 2)
            assert not any(probe.done() for probe in probes)
            release.set()
            answers = await asyncio.gather(*probes)
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert started == 3


async def test_a_client_still_sending_its_body_gets_the_answer(capped: MetricsServer) -> None:
    reader, writer = await idle_connection(capped)
    writer.write(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the answer is out before the body arrives
    writer.write(b"0123456789")
    await writer.drain()
    # Closed outright, the server's socket would answer the late body with a reset,
    # and the client would lose the answer it had not read yet.
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert answer.endswith(b"method not allowed\n")
    writer.close()


async def _true(value: bool) -> bool:
    return value
