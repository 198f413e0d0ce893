"""A webhook receiver on 127.0.0.1: records every POST it gets, and fails the first
attempts of each event on purpose (by ``webhook-id``), as a flaky endpoint would.

Failure modes, in order, for each event (or, with ``per_event=False``, for the
receiver's requests whatever their event): ``fail_with`` lists what the first attempts
get: ``503`` (a non-2xx answer), ``"drop"`` (the connection closes without an answer,
a network error to the sender); then 200. ``hold_first`` makes the first request of
each event wait until :attr:`ReceiverState.release` is set (or its own timeout), so a
test can stop the sender while the request is in flight.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.standins.server import QuietHandler, serve_in_background


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    at: float  # time.monotonic()
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    #: the answer it got: a status code, or "drop"
    answer: int | str

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclasses.dataclass
class ReceiverState:
    fail_with: tuple[int | str, ...] = (503, "drop")
    per_event: bool = True
    hold_first: bool = False
    hold_seconds: float = 30.0
    received: list[Received] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    #: set when a held request has arrived
    arrived: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: set to let held requests go on
    release: threading.Event = dataclasses.field(default_factory=threading.Event)
    _attempts: Counter[str] = dataclasses.field(default_factory=Counter)

    def by_webhook_id(self) -> dict[str, list[Received]]:
        with self.lock:
            grouped: dict[str, list[Received]] = {}
            for request in self.received:
                grouped.setdefault(request.webhook_id, []).append(request)
            return grouped

    def delivered(self) -> list[Received]:
        """The requests that got a 2xx answer."""
        with self.lock:
            return [r for r in self.received if isinstance(r.answer, int) and r.answer < 300]


class _Handler(QuietHandler):
    def do_POST(self) -> None:
        state: ReceiverState = self.server.state
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        if len(body) < length:
            # The sender went away mid-request (a daemon killed between the headers and
            # the body): no request arrived, as for any HTTP server.
            self.close_connection = True
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        key = headers.get("webhook-id", "") if state.per_event else ""
        with state.lock:
            state._attempts[key] += 1
            attempt = state._attempts[key]
        if attempt == 1 and state.hold_first:
            state.arrived.set()
            state.release.wait(state.hold_seconds)
        answer: int | str = (state.fail_with[attempt - 1]
                             if attempt <= len(state.fail_with) else 200)
        with state.lock:
            state.received.append(Received(time.monotonic(), self.path, headers, body, answer))
        if answer == "drop":
            self.close_connection = True
            return  # the server closes the connection: no answer at all
        assert isinstance(answer, int)
        text = b"ok" if answer < 300 else b"try again later"
        self.send_response(answer)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


@contextmanager
def webhook_receiver(**options: Any) -> Iterator[tuple[str, ReceiverState]]:
    """Yield (base URL, state) while the receiver runs."""
    state = ReceiverState(**options)
    with serve_in_background(_Handler, state) as url:
        try:
            yield url, state
        finally:
            state.release.set()  # no handler thread outlives the test waiting
