"""A stand-in for the Anthropic Messages API: ``POST /v1/messages`` on 127.0.0.1.

It speaks the wire format the real ``anthropic`` SDK expects (JSON, and SSE when the
request says ``"stream": true``), so tests drive the real client against it. Replies
are scripted in a queue (:meth:`AnthropicStandIn.enqueue`); when the queue is empty the
``default`` reply (or a function of the request) answers, and without one the stand-in
answers 400 so a test that makes an unplanned call fails loudly.

Usage is computed, not scripted (unless a reply overrides it): about four characters a
token, and prompt caching as the API reports it: the first request whose tools or
system blocks carry ``cache_control`` is billed that prefix as
``cache_creation_input_tokens``, later requests with the same prefix as
``cache_read_input_tokens``. (Unlike the API, any prefix is cacheable, however short.)

Every request is recorded (headers and JSON body) for assertions on what was sent.

Rate limits (``rate_limit=RateLimit(...)``) are enforced as the API documents them: a
token bucket per limit (requests, input tokens, output tokens per minute) whose capacity
is the limit and which refills continuously; input tokens are counted when a request
arrives (uncached input and cache writes; cache reads do not count), output tokens as
``max_tokens`` then corrected to what was written. A request that does not fit gets a
429 ``rate_limit_error`` with ``retry-after`` (whole seconds, rounded up), and every
answer carries the ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,
remaining,reset}`` headers. ``minute_seconds`` shortens the stand-in's minute so a
benchmark can run many minutes' worth of traffic; the header values stay per real minute
(the rate the same traffic would meet on the API), so a client's limiter must use the
same shortened window to read them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from tests.standins.server import QuietHandler, serve_in_background

__all__ = [
    "AnthropicStandIn",
    "RateLimit",
    "RecordedRequest",
    "Reply",
    "api_key_of",
    "error",
    "stream_error",
    "text",
    "tool_use",
]


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    #: Content blocks (``{"type": "text", ...}`` / ``{"type": "tool_use", ...}``).
    content: tuple[dict[str, Any], ...] = ()
    stop_reason: str = "end_turn"
    #: HTTP status; >= 400 sends ``error_body`` instead of a message.
    status: int = 200
    error_type: str = ""
    error_message: str = ""
    error_code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    #: Overrides of the computed usage (keys as in the API's ``usage``).
    usage: tuple[tuple[str, int], ...] = ()
    #: Stream requests only: fail with an SSE ``error`` event after ``message_start``.
    in_stream_error: bool = False


def text(answer: str, *, stop_reason: str = "end_turn", **usage: int) -> Reply:
    return Reply(content=({"type": "text", "text": answer},), stop_reason=stop_reason,
                 usage=tuple(usage.items()))


def tool_use(
    name: str, arguments: dict[str, Any], *, id: str | None = None, say: str | None = None,
    **usage: int,
) -> Reply:
    """A ``tool_use`` turn (``say``: text the model writes before the call)."""
    block = {"type": "tool_use", "id": id or f"toolu_{next(_ids):06d}", "name": name,
             "input": arguments}
    blocks = ({"type": "text", "text": say}, block) if say else (block,)
    return Reply(content=blocks, stop_reason="tool_use", usage=tuple(usage.items()))


def error(
    status: int, error_type: str, message: str, *, retry_after: str | None = None,
    error_code: str | None = None, headers: dict[str, str] | None = None,
) -> Reply:
    extra = dict(headers or {})
    if retry_after is not None:
        extra["retry-after"] = retry_after
    return Reply(status=status, error_type=error_type, error_message=message,
                 error_code=error_code, headers=tuple(extra.items()))


def stream_error(error_type: str, message: str) -> Reply:
    """A stream that starts (200, ``message_start``) and then fails with an ``error``
    event, as the API does when it overloads mid-response."""
    return Reply(error_type=error_type, error_message=message, in_stream_error=True)


_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    #: Lower-cased names.
    headers: dict[str, str]
    body: Any
    received_at: float


Responder = Reply | Callable[[dict[str, Any]], Reply]


@dataclasses.dataclass(frozen=True)
class RateLimit:
    """The limits the stand-in enforces, per (stand-in) minute."""

    input_tokens: float
    requests: float = 100_000
    output_tokens: float = 10_000_000
    #: real seconds in the stand-in's minute (6: traffic runs ten times faster)
    minute_seconds: float = 60.0


class _Buckets:
    """Token buckets for :class:`RateLimit` (the caller holds the stand-in's lock)."""

    KINDS = ("requests", "input-tokens", "output-tokens")

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.capacity = {"requests": limit.requests, "input-tokens": limit.input_tokens,
                         "output-tokens": limit.output_tokens}
        self.level = dict(self.capacity)
        self.at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        elapsed, self.at = now - self.at, now
        for kind, capacity in self.capacity.items():
            self.level[kind] = min(
                capacity, self.level[kind] + capacity * elapsed / self.limit.minute_seconds)

    def take(self, needs: dict[str, float]) -> float:
        """0 when taken; otherwise the seconds until it would fit (nothing taken)."""
        self._refill()
        wait = 0.0
        for kind, need in needs.items():
            need = min(need, self.capacity[kind])
            if self.level[kind] < need:
                wait = max(wait, (need - self.level[kind]) * self.limit.minute_seconds
                           / self.capacity[kind])
        if wait == 0.0:
            for kind, need in needs.items():
                self.level[kind] -= min(need, self.capacity[kind])
        return wait

    def give_back(self, kind: str, amount: float) -> None:
        self._refill()
        self.level[kind] = min(self.capacity[kind], self.level[kind] + max(0.0, amount))

    def headers(self) -> dict[str, str]:
        self._refill()
        per_minute = 60.0 / self.limit.minute_seconds
        now = dt.datetime.now(dt.UTC)
        headers = {}
        for kind, capacity in self.capacity.items():
            full_in = (capacity - self.level[kind]) * self.limit.minute_seconds / capacity
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(int(capacity * per_minute))
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(
                max(0, int(self.level[kind] * per_minute)))
            headers[f"anthropic-ratelimit-{kind}-reset"] = (
                now + dt.timedelta(seconds=full_in)).isoformat(timespec="seconds").replace(
                    "+00:00", "Z")
        return headers


class AnthropicStandIn:
    """``with AnthropicStandIn() as api: ... api.url ...``"""

    def __init__(
        self, *, latency: float = 0.0, default: Responder | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        #: Seconds every response waits before its first byte (a benchmark sets 0.3).
        self.latency = latency
        self.default = default
        self._buckets = _Buckets(rate_limit) if rate_limit is not None else None
        #: 429s sent for the rate limit; tokens counted against it (accepted requests)
        self.rate_limited = 0
        self.counted_input_tokens = 0
        #: when each 429 was sent (``time.monotonic()``)
        self.rate_limited_at: list[float] = []
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._cached_prefixes: set[str] = set()
        self._counter = itertools.count(1)
        self._stack = ExitStack()
        self.url = ""

    def __enter__(self) -> AnthropicStandIn:
        self.url = self._stack.enter_context(serve_in_background(_Handler, self))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def message_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/messages"]

    # Called by the handler thread --------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_reply(self, body: dict[str, Any]) -> Reply | None:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.default is None:
            return None
        return self.default if isinstance(self.default, Reply) else self.default(body)

    def _admit(self, body: dict[str, Any]) -> tuple[float, dict[str, str]]:
        """Take the request's capacity: (0, headers) when admitted, otherwise (seconds
        until it would fit, headers)."""
        if self._buckets is None:
            return 0.0, {}
        counted = self._counted_input(body)
        with self._lock:
            wait = self._buckets.take({"requests": 1, "input-tokens": counted,
                                       "output-tokens": float(body.get("max_tokens") or 0)})
            if wait > 0:
                self.rate_limited += 1
                self.rate_limited_at.append(time.monotonic())
            else:
                self.counted_input_tokens += counted
            return wait, self._buckets.headers()

    def _written(self, body: dict[str, Any], usage: dict[str, int]) -> None:
        """The output bucket took ``max_tokens``; give back what was not written."""
        if self._buckets is not None:
            with self._lock:
                self._buckets.give_back("output-tokens", float(
                    (body.get("max_tokens") or 0) - usage.get("output_tokens", 0)))

    def _counted_input(self, body: dict[str, Any]) -> int:
        """Input tokens a request counts against the input limit: all of it but a
        prefix already cached (cache reads do not count)."""
        tools = body.get("tools") or []
        system = body.get("system") or []
        system_blocks = system if isinstance(system, list) else []
        prefix = json.dumps([tools, system], sort_keys=True)
        counted = _tokens(json.dumps(body.get("messages", []), sort_keys=True))
        if tools or system:
            marked = any("cache_control" in block for block in [*tools, *system_blocks])
            key = hashlib.sha256(prefix.encode()).hexdigest()
            with self._lock:
                cached = marked and key in self._cached_prefixes
            counted += 0 if cached else _tokens(prefix)
        return counted

    def _usage(self, body: dict[str, Any], reply: Reply) -> dict[str, int]:
        tools = body.get("tools") or []
        system = body.get("system") or []
        system_blocks = system if isinstance(system, list) else []
        marked = any("cache_control" in block for block in [*tools, *system_blocks])
        prefix = json.dumps([tools, system], sort_keys=True)
        rest = json.dumps(body.get("messages", []), sort_keys=True)
        usage = {"input_tokens": _tokens(rest), "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        if marked:
            key = hashlib.sha256(prefix.encode()).hexdigest()
            with self._lock:
                seen = key in self._cached_prefixes
                self._cached_prefixes.add(key)
            usage["cache_read_input_tokens" if seen else "cache_creation_input_tokens"] = (
                _tokens(prefix)
            )
        else:
            usage["input_tokens"] += _tokens(prefix) if (tools or system) else 0
        written = "".join(
            block.get("text", "") or json.dumps(block.get("input", {}))
            for block in reply.content
        )
        usage["output_tokens"] = _tokens(written)
        usage.update(dict(reply.usage))
        return usage

    def _request_id(self) -> str:
        return f"req_standin_{next(self._counter):06d}"


def api_key_of(headers: Any) -> str | None:
    """The key a request authenticates with. The API documents ``x-api-key``; the
    installed SDK (anthropic 2.10.0) sends API keys as ``Authorization: Bearer``, so
    both are accepted."""
    key = headers.get("x-api-key")
    if key:
        return str(key)
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    @property
    def api(self) -> AnthropicStandIn:
        state: AnthropicStandIn = self.server.state
        return state

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        self.api._record(RecordedRequest(
            "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body,
            time.monotonic(),
        ))
        if self.path.split("?")[0] != "/v1/messages":
            self._error(404, "not_found_error", f"Not found: {self.path}")
            return
        if api_key_of(self.headers) is None:
            self._error(401, "authentication_error", "x-api-key header is required")
            return
        problem = _invalid(body)
        if problem:
            self._error(400, "invalid_request_error", problem)
            return
        wait, limit_headers = self.api._admit(body)
        if wait > 0:
            self._error(429, "rate_limit_error",
                        "This request would exceed the rate limit for your organization "
                        "of input tokens per minute.",
                        headers={**limit_headers, "retry-after": str(max(1, math.ceil(wait)))})
            return
        if self.api.latency:  # the model's time to answer, after the limits' check
            time.sleep(self.api.latency)
        reply = self.api._next_reply(body)
        if reply is None:
            self._error(400, "invalid_request_error", "stand-in: no scripted reply left")
            return
        if reply.status >= 400:
            self._error(reply.status, reply.error_type, reply.error_message,
                        error_code=reply.error_code, headers=dict(reply.headers))
            return
        message = {
            "id": f"msg_standin_{next(_ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [dict(block) for block in reply.content],
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": self.api._usage(body, reply),
        }
        self.api._written(body, message["usage"])
        if body.get("stream"):
            self._stream(message, reply, limit_headers)
        else:
            # A scripted reply's headers go with a success too (anthropic-ratelimit-*).
            self._json(200, message, {**limit_headers, **dict(reply.headers)})

    def do_GET(self) -> None:
        self._error(404, "not_found_error", f"Not found: {self.path}")

    # Responses -----------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", self.api._request_id())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(
        self, status: int, error_type: str, message: str, *, error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        detail: dict[str, Any] = {"type": error_type, "message": message}
        if error_code:
            detail["details"] = {"error_code": error_code}
        self._json(status, {"type": "error", "error": detail, "request_id": None}, headers)

    def _stream(
        self, message: dict[str, Any], reply: Reply, headers: dict[str, str]
    ) -> None:
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", self.api._request_id())
        # No length for a stream: the body ends when the connection closes.
        self.send_header("connection", "close")
        self.close_connection = True
        self.end_headers()
        for event, data in _events(message, reply):
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()


def _events(message: dict[str, Any], reply: Reply) -> Iterator[tuple[str, dict[str, Any]]]:
    """The documented event flow: message_start, per block content_block_start /
    content_block_delta... / content_block_stop, message_delta (stop_reason and the
    output usage), message_stop; a ping early on, as the API sends them."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    yield "message_start", {"type": "message_start", "message": start}
    if reply.in_stream_error:
        yield "error", {"type": "error", "error": {"type": reply.error_type,
                                                   "message": reply.error_message}}
        return
    yield "ping", {"type": "ping"}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": {"type": "text", "text": ""}}
            for piece in _chunks(block["text"]):
                yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "text_delta", "text": piece}}
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"],
                       "input": {}}
            yield "content_block_start", {"type": "content_block_start", "index": index,
                                          "content_block": opening}
            for piece in _chunks(json.dumps(block["input"])):
                yield "content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    yield "message_stop", {"type": "message_stop"}


def _chunks(text: str, size: int = 8) -> Iterator[str]:
    for at in range(0, len(text), size):
        yield text[at:at + size]


def _invalid(body: Any) -> str | None:
    """The checks the real API makes that a client bug would trip (400s)."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            return f"{field}: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    offered: set[str] = set()
    for number, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            if not content:
                return f"messages.{number}: text content must be non-empty"
            continue
        if not isinstance(content, list) or not content:
            return f"messages.{number}: content must be a non-empty list"
        for block in content:
            if block.get("type") == "tool_use":
                offered.add(block.get("id", ""))
            elif block.get("type") == "tool_result" and block.get("tool_use_id") not in offered:
                return (f"messages.{number}: tool_result block(s) provided when previous "
                        "message does not have tool_use blocks")
    names = [tool.get("name") for tool in body.get("tools") or []]
    if len(names) != len(set(names)):
        return "tools: Tool names must be unique"
    system = body.get("system")
    system_blocks = system if isinstance(system, list) else []
    markers = sum("cache_control" in block
                  for block in [*(body.get("tools") or []), *system_blocks])
    if markers > 4:
        return "A maximum of 4 blocks with cache_control may be provided"
    return None
