"""Run a stdlib HTTP server on 127.0.0.1 (a free port) in a background thread.

The stand-ins use ``ThreadingHTTPServer`` rather than an asyncio server so that they
never share the test's event loop: a stand-in that sleeps (a slow website) cannot stall
the client under test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # The state object handlers read (``self.server.state``).
    state: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up early (the size cap, timeouts) are part of the tests.
        pass


class QuietHandler(BaseHTTPRequestHandler):
    server: QuietServer
    # The handlers write a response's headers and its body separately; with Nagle's
    # algorithm on, the body then waits for the client's delayed ACK (~40 ms on Linux),
    # a delay no real API adds. Measured: a stand-in answering "in 300 ms" took 346 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_in_background(handler: type[BaseHTTPRequestHandler], state: Any) -> Iterator[str]:
    """Yield the server's base URL (``http://127.0.0.1:PORT``) while it runs."""
    server = QuietServer(("127.0.0.1", 0), handler)
    server.state = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"standin-{handler.__name__}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
