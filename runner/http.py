"""The metrics and health endpoint on ``RUNNER_METRICS_ADDR``.

``GET /metrics`` serves :func:`runner.metrics.render` (classic text format), ``GET
/healthz`` answers 200 ``ok`` while the daemon's health check passes and 503
``unhealthy: CODE`` otherwise, where CODE is a short stable token (``heartbeat``,
``check_timeout``, ``check_failed``); the reason itself (a database error, a host name)
goes to the log as ``health_failed``, never to whoever can reach the port. Anything
else is 404, and any method but GET (or HEAD) is 405.

The port may face a hostile neighbour, so what one client can hold is bounded:

* at most ``max_connections`` (64) connections at once. When all are taken and one of
  them is idle (it has waited 0.1 s for its request head without sending it all, or
  has had its answer), a new connection replaces the oldest idle one: a probe that
  sends its request at once gets in however many idle sockets a neighbour keeps open,
  and the neighbour's oldest connection is the one most likely to be stalling. When
  none is idle, new connections wait in the kernel's listen queue (costing this
  process no descriptor) until one finishes, which the timeouts below bound. So the
  server holds at most ``max_connections`` client sockets, plus the one each
  listening address is admitting, however many clients connect, and cannot starve
  the daemon's database connections of descriptors.
* the whole request head within ``head_timeout`` (2 s), counted from its admission,
  not per byte, so trickling a byte at a time does not extend it; at most 16 KiB.
* the answer written within ``write_timeout`` (5 s); then a short lingering close (at
  most 1 s) so that a client still sending gets its answer instead of a reset.

Dropped and replaced connections are counted and logged at most once a minute
(``metrics_connections_shed``).

Why a small asyncio server and not prometheus_client's WSGI app in a thread: the health
check is a coroutine that runs on the daemon's loop, and a threaded server would have
to hop back onto that loop for every probe. It accepts on raw sockets (not
``asyncio.start_server``) because admission is the point: asyncio's server accepts
everything the kernel has queued, a descriptor each, before any callback could refuse.
Two fixed GET routes need only a request line and the end of the headers. Rendering
the exposition is synchronous CPU work, so it runs in a worker thread
(prometheus_client is thread-safe, and the database figures come from a cached
snapshot, so a scrape never waits on Postgres). Every response closes its connection:
scrapers and probes send one request per connection anyway, and it keeps the server
free of keep-alive state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import TracebackType
from typing import Final

from runner import metrics
from runner.errors import Unhealthy

__all__ = ["HealthCheck", "MetricsServer", "Unhealthy"]

logger = logging.getLogger(__name__)

#: An async callable that returns when healthy and raises otherwise, preferably
#: :class:`Unhealthy` (whose code the response shows); any other exception is
#: answered as ``check_failed``.
HealthCheck = Callable[[], Awaitable[None]]

DEFAULT_MAX_CONNECTIONS: Final = 64
DEFAULT_HEAD_TIMEOUT: Final = 2.0
DEFAULT_WRITE_TIMEOUT: Final = 5.0

# A request head larger than this is not a scrape or a probe.
_MAX_HEAD_BYTES: Final = 16 * 1024
_RECV_BYTES: Final = 4096
# After the answer: wait this long (and read at most this much) for the client to
# close, so that unread bytes it sent do not turn our close into a reset.
_LINGER_SECONDS: Final = 1.0
_LINGER_BYTES: Final = 64 * 1024
_LISTEN_BACKLOG: Final = 1024
# How long a connection may wait for its head before a newcomer may take its place
# (when all are taken): a client connected a moment ago may not have sent it yet.
_REPLACE_GRACE_SECONDS: Final = 0.1
# accept() failed (out of descriptors or buffers): wait before trying again.
_ACCEPT_RETRY_SECONDS: Final = 0.5
_SHED_LOG_INTERVAL_SECONDS: Final = 60.0
_TEXT_PLAIN: Final = "text/plain; charset=utf-8"


class _State(enum.Enum):
    # Accepted, its handler not yet run: its head may already be in the socket.
    NEW = "new"
    WAITING = "waiting"  # for (the rest of) its request head
    BUSY = "busy"  # being answered
    LINGERING = "lingering"  # answered, waiting for the client to close
    CLOSING = "closing"  # replaced or stopped; its handler is ending


@dataclasses.dataclass(eq=False)
class _Connection:
    sock: socket.socket
    handler: asyncio.Task[None] | None = None
    state: _State = _State.NEW
    #: loop time of the last change of state
    since: float = 0.0

    def become(self, state: _State) -> None:
        self.state = state
        self.since = asyncio.get_running_loop().time()

    def replaceable_at(self) -> float | None:
        """Loop time from which this connection may be dropped for a newcomer: once it
        has waited for its head for the grace period (a client that connected a moment
        ago may simply not have sent it yet), or once it has been answered."""
        if self.state is _State.WAITING:
            return self.since + _REPLACE_GRACE_SECONDS
        if self.state is _State.LINGERING:
            return self.since
        return None


class _HeadTooLarge(Exception):
    pass


class _ShedLog:
    """Counts connections dropped or refused and logs the counts at most once per
    interval: a flood must not turn into a flood of log lines."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._counts: Counter[str] = Counter()
        self._logged_at = -_SHED_LOG_INTERVAL_SECONDS

    def note(self, reason: str) -> None:
        self._counts[reason] += 1
        if time.monotonic() - self._logged_at >= _SHED_LOG_INTERVAL_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._counts:
            logger.warning("metrics_connections_shed", extra={
                **{reason: count for reason, count in sorted(self._counts.items())},
                "max_connections": self._max_connections})
            self._counts.clear()
            self._logged_at = time.monotonic()


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` until stopped.

    ``port=0`` binds a free port; :attr:`port` tells which after :meth:`start`. A host
    name resolving to several addresses (``localhost``) binds each of them; with
    port 0 they may get different ports, and :attr:`port` is the first one's.
    """

    def __init__(
        self,
        health_check: HealthCheck,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        health_timeout: float = 2.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._health_check = health_check
        self._host = host
        self._requested_port = port
        self._health_timeout = health_timeout
        self._max_connections = max_connections
        self._head_timeout = head_timeout
        self._write_timeout = write_timeout
        self._listeners: list[socket.socket] = []
        self._acceptors: list[asyncio.Task[None]] = []
        # In accept order, so the first idle one is the oldest.
        self._connections: dict[socket.socket, _Connection] = {}
        self._room = asyncio.Event()
        self._shed = _ShedLog(max_connections)
        self._last_health_code: str | None = None

    @property
    def port(self) -> int:
        if not self._listeners:
            raise RuntimeError("the metrics server is not started")
        return int(self._listeners[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client sockets held right now (never more than ``max_connections``)."""
        return len(self._connections)

    async def start(self) -> None:
        if self._listeners:
            raise RuntimeError("the metrics server is already started")
        self._listeners = await _listen(self._host, self._requested_port)
        self._acceptors = [
            asyncio.create_task(self._accept(listener), name=f"metrics-accept-{i}")
            for i, listener in enumerate(self._listeners)
        ]
        logger.info("metrics_server_started", extra={
            "address": self.url, "max_connections": self._max_connections})

    async def stop(self) -> None:
        """Stop listening and drop connections still being served."""
        listeners, self._listeners = self._listeners, []
        if not listeners:
            return
        acceptors, self._acceptors = self._acceptors, []
        for acceptor in acceptors:
            acceptor.cancel()
        await asyncio.gather(*acceptors, return_exceptions=True)
        for listener in listeners:
            listener.close()
        handlers = [c.handler for c in self._connections.values() if c.handler is not None]
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        self._shed.flush()
        logger.info("metrics_server_stopped")

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # Admission --------------------------------------------------------------------------

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _address = await loop.sock_accept(listener)
            except ConnectionAbortedError:
                continue  # that client is gone already
            except OSError:
                # Out of descriptors (EMFILE) or buffers: try again shortly rather
                # than spin, and rather than let the server die.
                self._shed.note("accept_failed")
                await asyncio.sleep(_ACCEPT_RETRY_SECONDS)
                continue
            try:
                # Holding this one socket, take no other from the kernel's queue
                # until there is room for it.
                await self._make_room()
            except BaseException:
                sock.close()
                raise
            sock.setblocking(False)
            connection = _Connection(sock)
            connection.become(_State.NEW)
            self._connections[sock] = connection
            connection.handler = asyncio.create_task(self._serve(connection))
            # A done callback, not a ``finally``: a handler cancelled before its first
            # step never runs its body, and its socket must be closed all the same.
            connection.handler.add_done_callback(functools.partial(self._release, connection))

    async def _make_room(self) -> None:
        """Return once fewer than ``max_connections`` are held, dropping the oldest
        replaceable connection if that is what it takes."""
        loop = asyncio.get_running_loop()
        while len(self._connections) >= self._max_connections:
            candidates = [
                (at, connection) for connection in self._connections.values()
                if (at := connection.replaceable_at()) is not None
            ]
            wait: float | None = None  # every connection busy: until one ends
            if candidates:
                at, oldest = min(candidates, key=lambda candidate: candidate[0])
                wait = at - loop.time()
                if wait <= 0 and oldest.handler is not None:
                    if oldest.state is _State.WAITING:
                        self._shed.note("replaced_idle")  # a lingering one had its answer
                    oldest.become(_State.CLOSING)
                    oldest.handler.cancel()
                    # Its done callback closes its socket: wait for that, so that the
                    # cap holds exactly.
                    await asyncio.wait({oldest.handler})
                    continue
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._room.wait()

    def _release(self, connection: _Connection, _handler: asyncio.Task[None]) -> None:
        connection.state = _State.CLOSING
        connection.sock.close()
        self._connections.pop(connection.sock, None)
        self._room.set()

    # One connection, one request --------------------------------------------------------

    async def _serve(self, connection: _Connection) -> None:
        loop = asyncio.get_running_loop()
        sock = connection.sock
        connection.become(_State.WAITING)
        self._room.set()  # a replacement candidate, once its grace is over
        try:
            response = await self._respond(connection)
            if response is not None:
                async with asyncio.timeout(self._write_timeout):
                    await loop.sock_sendall(sock, response)
                connection.become(_State.LINGERING)
                self._room.set()
                await _linger(sock)
        except TimeoutError:
            self._shed.note("write_timeout")
        except OSError:
            pass  # the client went away: nobody to answer
        except asyncio.CancelledError:
            # Replaced or stopped (_release closes the socket). Swallowed on purpose:
            # nothing awaits this task but stop() and _make_room(), which only need it
            # to end.
            pass

    async def _respond(self, connection: _Connection) -> bytes | None:
        try:
            head = await self._read_head(connection.sock)
        except _HeadTooLarge:
            too_large = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            return _response(too_large, b"request head too large\n")
        except TimeoutError:
            self._shed.note("head_timeout")
            return None
        if head is None:
            return None  # closed before a full head: a port scan, a TCP health check
        connection.become(_State.BUSY)
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(HTTPStatus.BAD_REQUEST, b"malformed request line\n")
        method, target, _version = parts
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return _response(HTTPStatus.NOT_FOUND, b"not found; try /metrics or /healthz\n")
        if method not in ("GET", "HEAD"):
            return _response(
                HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", allow="GET, HEAD"
            )
        head_only = method == "HEAD"
        if path == "/metrics":
            try:
                body = await asyncio.to_thread(metrics.render)
            except Exception:
                logger.exception("metrics_render_failed")
                return _response(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n")
            return _response(HTTPStatus.OK, body, metrics.CONTENT_TYPE, head_only=head_only)
        code = await self._check_health()
        if code is None:
            return _response(HTTPStatus.OK, b"ok\n", head_only=head_only)
        return _response(
            HTTPStatus.SERVICE_UNAVAILABLE, f"unhealthy: {code}\n".encode(), head_only=head_only
        )

    async def _read_head(self, sock: socket.socket) -> bytes | None:
        """The request head up to its blank line, or None if the client closed first.
        The deadline covers the whole head, so trickling bytes does not extend it."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        async with asyncio.timeout(self._head_timeout):
            while True:
                chunk = await loop.sock_recv(sock, _RECV_BYTES)
                if not chunk:
                    return None
                # Only the new bytes (and the three before them) can complete "\r\n\r\n".
                start = max(0, len(received) - 3)
                received += chunk
                end = received.find(b"\r\n\r\n", start)
                if (end + 4 if end >= 0 else len(received)) > _MAX_HEAD_BYTES:
                    raise _HeadTooLarge
                if end >= 0:
                    return bytes(received[: end + 4])

    async def _check_health(self) -> str | None:
        """``None`` when healthy, else the code to answer with. The reason is logged
        when the code changes (probes come every few seconds: not every probe)."""
        reason = ""
        try:
            async with asyncio.timeout(self._health_timeout):
                await self._health_check()
        except TimeoutError:
            code: str | None = "check_timeout"
            reason = f"health check timed out after {self._health_timeout:g}s"
        except Unhealthy as exc:
            code, reason = exc.code, str(exc)
        except Exception as exc:  # any failure of the check is the answer, not a crash
            code, reason = "check_failed", f"{type(exc).__name__}: {exc}"
        else:
            code = None
        if code != self._last_health_code:
            if code is None:
                logger.info("health_recovered")
            else:
                logger.warning("health_failed", extra={
                    "code": code, "reason": " ".join(reason.split())})
            self._last_health_code = code
        return code


async def _listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to (as asyncio's
    ``create_server`` does: IPv6 sockets only for IPv6, ``""`` for every interface)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                listener.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{address!r}: {exc.strerror}") from None
            listener.listen(_LISTEN_BACKLOG)
            listener.setblocking(False)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


async def _linger(sock: socket.socket) -> None:
    """Half-close, then read what the client still sends until it closes (bounded)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    discarded = 0
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(_LINGER_SECONDS):
            while discarded < _LINGER_BYTES:
                chunk = await loop.sock_recv(sock, _RECV_BYTES)
                if not chunk:
                    return
                discarded += len(chunk)


def _response(
    status: HTTPStatus,
    body: bytes,
    content_type: str = _TEXT_PLAIN,
    *,
    head_only: bool = False,
    allow: str | None = None,
) -> bytes:
    headers = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if allow is not None:
        headers.append(f"Allow: {allow}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
