"""The one module that talks to the Anthropic Messages API.

Everything an agent does with a model goes through :class:`LLMSession` (or the
:func:`run_tool_loop` and :func:`complete_json` built on it), so three things hold for
every call, whoever makes it:

* **Retry policy is ours, not the SDK's.** The client is built with ``max_retries=0``.
  A 429 waits for ``retry-after`` (capped) and tries again without spending a task
  retry, up to a total waiting budget; past it the task is retried later. 529, other
  5xx and connection errors are retried a few times with capped exponential backoff,
  then raise :class:`~runner.api.RetryLater` so the task's own retry machinery takes
  over. Any other 4xx raises :class:`~runner.api.FailPermanently` with the API's
  message: sending the same request again cannot help.
* **Every successful call is in the cost ledger.** Its usage is priced from
  ``agents/prices.json`` (:mod:`agents.prices`) and recorded through
  ``ctx.record_llm_call`` at once, so the cost shows even if the attempt later fails.
* **Budgets and provider limits hold for every call** (``runner.context`` has the
  design): before a call its estimate (input at about 3.5 characters a token, plus all
  of ``max_tokens``, priced here) is reserved through ``ctx.reserve_llm_call`` -- a
  budget reached raises :class:`~runner.api.DeferUntil`, the task's ``max_cost_usd``
  :class:`~runner.api.FailPermanently` -- and each HTTP request first waits for room in
  the limiter every daemon shares (``ctx.wait_for_llm_capacity``). Each response's
  ``anthropic-ratelimit-*`` headers are learned; a 429 pauses the model for every
  daemon (``ctx.llm_rate_limited``). The ledger row ends the reservation in the same
  statement.
* **Every HTTP attempt is counted** (``ctx.observe_http_call("anthropic", outcome)``),
  failed ones included.

Prompt caching: the system prompt is sent as one text block with ``cache_control:
{"type": "ephemeral"}``, and the last tool definition carries the same marker. The API
caches the prefix up to each marker (tools, then system), which in a tool loop is the
part every step resends.

Long outputs (``max_tokens`` above :data:`STREAM_ABOVE_MAX_TOKENS`, or ``stream=True``)
go through ``messages.stream``: the SDK refuses non-streaming requests that may run
longer than ten minutes, and a stream keeps an idle connection from being cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ValidationError

from agents.prices import PriceTable, load_price_table
from runner.api import (
    AgentContext,
    AgentSettings,
    FailPermanently,
    JournaledModelTurn,
    JournaledToolResult,
    LLMCallEstimate,
    LLMCallRecord,
    LLMReservation,
    RetryLater,
    backoff_delay,
    describe_validation_error,
)

# The SDK is imported where it is used, not here: importing it takes seconds of CPU
# (its type tree is large), and every daemon imports this module through the agent
# registry whether or not an LLM is ever called (measured: ~3 s on the CI machine).
if TYPE_CHECKING:
    import anthropic
    from anthropic.types import (
        ContentBlockParam,
        Message,
        MessageParam,
        TextBlockParam,
        ToolParam,
        ToolResultBlockParam,
    )

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_TOKENS",
    "NO_API_KEY_MESSAGE",
    "STREAM_ABOVE_MAX_TOKENS",
    "LLMSession",
    "LoopTool",
    "RetryPolicy",
    "ToolLoopResult",
    "ToolOutcome",
    "build_client",
    "complete_json",
    "has_api_key",
    "run_tool_loop",
    "text_of",
]

DEFAULT_BASE_URL: Final = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS: Final = 4096
#: Above this ``max_tokens`` a call streams (the SDK requires it from about 21k up).
STREAM_ABOVE_MAX_TOKENS: Final = 16_384
NO_API_KEY_MESSAGE: Final = (
    "no ANTHROPIC_API_KEY configured: LLM agents need an Anthropic API key "
    "(set ANTHROPIC_API_KEY; ANTHROPIC_BASE_URL for a proxy)"
)
_SERVICE: Final = "anthropic"
_EPHEMERAL: Final = {"type": "ephemeral"}
# A tool result goes back into every later step's prompt: keep it bounded.
MAX_TOOL_RESULT_CHARS: Final = 20_000

HttpOutcome = Literal[
    "ok", "not_found", "rate_limited", "client_error", "server_error", "timeout", "error"
]
M = TypeVar("M", bound=BaseModel)


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one model call rides out API trouble. The defaults suit production; tests
    pass small figures (there is no environment variable: this is code policy)."""

    #: Longest single wait for a 429's ``retry-after``.
    rate_limit_max_wait: float = 60.0
    #: Total 429 waiting per call before giving the task back to the retry machinery
    #: (below the default agent timeout of 300 s, so the wait ends as a retry with a
    #: delay rather than as a timeout).
    rate_limit_budget: float = 120.0
    #: Wait for a 429 that names no ``retry-after``.
    rate_limit_default_wait: float = 10.0
    #: Retries of 529 / 5xx / connection errors per call before ``RetryLater``.
    transient_retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    #: Per HTTP request (a streamed response may take as long as it keeps sending).
    request_timeout: float = 600.0

    def backoff(self, failure: int) -> float:
        """Capped exponential backoff with jitter, ``failure`` counting from 1."""
        return backoff_delay(failure, base=self.backoff_base, cap=self.backoff_max)


DEFAULT_POLICY: Final = RetryPolicy()


# Tools, as the loop sees them -------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool hands back to the model: ``content`` goes into a ``tool_result``.
    ``effects`` (JSON, or None) is what the call buffered for the finishing transaction:
    journaled with the result, and handed to :meth:`LoopTool.restore` when a later
    attempt replays the result instead of running the tool again."""

    content: str
    is_error: bool = False
    effects: Any = None


class LoopTool(Protocol):
    """A tool the loop can offer and run (``agents.tools`` binds its registry to this)."""

    @property
    def name(self) -> str: ...

    def definition(self) -> ToolParam:
        """The ``tools`` entry: name, description, input_schema."""
        ...

    async def invoke(self, arguments: Mapping[str, Any]) -> ToolOutcome: ...

    def restore(self, effects: Any) -> None:
        """Buffer again what a journaled call buffered (its ``ToolOutcome.effects``):
        the replayed call is not run twice, yet its writes still commit with the task."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class ToolLoopResult:
    #: The model's final answer (at the step cap: the last text it wrote).
    text: str
    #: The API's last ``stop_reason`` (``end_turn``, ``max_tokens``, ``refusal`` ...) or
    #: ``max_steps`` when the cap ended the loop while the model still wanted tools.
    stop_reason: str
    #: Model calls made.
    steps: int
    #: The whole conversation, the last assistant turn included.
    messages: list[MessageParam]


class InvalidModelAnswer(RetryLater):
    """The model's answer stayed invalid after one correction. Transient for the
    attempt (a later one may get a valid answer), but about the one question asked:
    callers judging many companies keep their rule-based result for that one and
    carry on (see ``agents.enrichment_agent.is_one_company_llm_failure``)."""


# The client -------------------------------------------------------------------------


def has_api_key(settings: AgentSettings) -> bool:
    key = settings.anthropic_api_key
    return key is not None and bool(key.get_secret_value().strip())


def build_client(
    settings: AgentSettings, *, policy: RetryPolicy = DEFAULT_POLICY
) -> anthropic.AsyncAnthropic:
    """An SDK client from the settings, with the SDK's own retries off.

    Raises :class:`FailPermanently` without a key: that is the LLM agents' documented
    offline behaviour (CONTRACT.md: no key, no network).
    """
    if not has_api_key(settings):
        raise FailPermanently(NO_API_KEY_MESSAGE)
    assert settings.anthropic_api_key is not None
    import anthropic

    return anthropic.AsyncAnthropic(
        api_key=settings.anthropic_api_key.get_secret_value(),
        # Passed explicitly so the SDK never falls back to reading the environment
        # itself (settings are read once, in runner.settings).
        base_url=settings.anthropic_base_url or DEFAULT_BASE_URL,
        max_retries=0,
        timeout=policy.request_timeout,
    )


# One SDK client per (event loop, key, base URL, timeout), kept for the process's life.
# A new client builds a new SSL context (loading the CA bundle): about 160 ms of CPU
# on the event loop, per attempt, measured by scripts/bench_pipeline.py. Keyed by loop
# because the client's connection pool belongs to the loop that first used it.
_SHARED_CLIENTS: dict[tuple[int, str, str, float], anthropic.AsyncAnthropic] = {}


def shared_client(
    settings: AgentSettings, *, policy: RetryPolicy = DEFAULT_POLICY
) -> anthropic.AsyncAnthropic:
    if not has_api_key(settings):
        raise FailPermanently(NO_API_KEY_MESSAGE)
    assert settings.anthropic_api_key is not None
    key = (
        id(asyncio.get_running_loop()),
        settings.anthropic_api_key.get_secret_value(),
        settings.anthropic_base_url or DEFAULT_BASE_URL,
        policy.request_timeout,
    )
    client = _SHARED_CLIENTS.get(key)
    if client is None or client.is_closed():
        client = _SHARED_CLIENTS[key] = build_client(settings, policy=policy)
    return client


@dataclasses.dataclass(slots=True)
class _Failure:
    """An API failure, classified once."""

    kind: Literal["rate_limited", "transient", "permanent"]
    outcome: HttpOutcome
    message: str
    retry_after: float | None = None


class LLMSession:
    """One attempt's handle on the Messages API: a client, the retry policy and the
    ledger. Use as ``async with LLMSession(ctx) as llm: ...``. The SDK client is
    shared by the process's attempts. Holds no database connection."""

    def __init__(
        self,
        ctx: AgentContext,
        *,
        policy: RetryPolicy | None = None,
        client: anthropic.AsyncAnthropic | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self._ctx = ctx
        self._policy = policy or DEFAULT_POLICY
        # The client is shared across attempts (see shared_client); never closed here.
        self._client = client if client is not None else shared_client(
            ctx.settings, policy=self._policy
        )
        self._prices = prices or load_price_table()
        # (reason, model) pairs already logged: one warning per attempt is enough.
        self._warned: set[tuple[str, str]] = set()
        #: The journal step and request fingerprint of the last :meth:`create` (the
        #: tool loop keys the tool results of that turn by them).
        self.last_step = 0
        self.last_fingerprint = ""

    async def __aenter__(self) -> LLMSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def create(
        self,
        *,
        messages: Sequence[MessageParam],
        system: str | None = None,
        tools: Sequence[ToolParam] = (),
        model: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stream: bool | None = None,
    ) -> Message:
        """One model call, retried as the policy says, priced and recorded.

        ``model`` defaults to the agent's (``ai_agents.model``). ``stream=None`` streams
        only long outputs.
        """
        import anthropic
        from anthropic.resources.messages import DEPRECATED_MODELS

        model = model or self._ctx.agent.model
        if stream is None:
            stream = max_tokens > STREAM_ABOVE_MAX_TOKENS
        params = _request_params(model, max_tokens, messages, system, tools)
        # Durable turns: the same request at the same step of an earlier attempt of this
        # task is answered from the journal (no call, no cost, no ledger row).
        step = self.last_step = self._ctx.next_llm_step()
        fingerprint = self.last_fingerprint = request_fingerprint(params)
        recorded = await self._ctx.journal_lookup(step, fingerprint)
        if recorded is not None:
            from anthropic.types import Message

            replayed = Message.model_validate(recorded)
            await self._ctx.journal_model_turn(
                JournaledModelTurn(step, fingerprint, replayed.model or model, recorded),
                replayed=True,
            )
            return replayed
        if model in DEPRECATED_MODELS:
            # The SDK's DeprecationWarning is hidden by Python's default filters in a
            # daemon; the task log is where an operator will see it.
            await self._warn_once(
                "deprecated", model,
                f"model {model!r} is deprecated by Anthropic and reaches end of life on "
                f"{DEPRECATED_MODELS[model]}; set ai_agents.model to a current model",
            )
        # Budgets: refused before it is sent (DeferUntil / FailPermanently propagate).
        reservation = await self._ctx.reserve_llm_call(self._estimate(model, params))
        waited_for_rate_limit = 0.0
        transient_failures = 0
        while True:
            began = time.monotonic()
            try:
                message, request_id = await self._send(params, stream=stream)
            except anthropic.APIStatusError as exc:
                failure = _classify_status_error(exc)
            except anthropic.APITimeoutError:
                failure = _Failure("transient", "timeout", "request to the Anthropic API timed out")
            except anthropic.APIConnectionError as exc:
                failure = _Failure("transient", "error", f"cannot reach the Anthropic API: {exc}")
            else:
                self._ctx.observe_http_call(_SERVICE, "ok")
                duration_ms = int((time.monotonic() - began) * 1000)
                # The ledger row ends the call's reservation in the same statement.
                call = await self._record(message, model, duration_ms, request_id,
                                          reservation)
                # Journaled as soon as it is paid for: a crash before this line makes
                # the call again in the next attempt (at least once, never lost).
                await self._ctx.journal_model_turn(JournaledModelTurn(
                    step, fingerprint, call.model, message.to_dict(),
                    input_tokens=call.input_tokens, output_tokens=call.output_tokens,
                    cost_usd=call.cost_usd, duration_ms=duration_ms,
                ), replayed=False)
                return message

            self._ctx.observe_http_call(_SERVICE, failure.outcome)
            if failure.kind == "permanent":
                raise FailPermanently(failure.message)
            if failure.kind == "rate_limited":
                wait = min(
                    failure.retry_after if failure.retry_after is not None
                    else self._policy.rate_limit_default_wait,
                    self._policy.rate_limit_max_wait,
                )
                # Every daemon waits out the (capped) retry-after, not only this attempt.
                await self._ctx.llm_rate_limited(model, wait)
                if waited_for_rate_limit + wait > self._policy.rate_limit_budget:
                    # Long enough in this attempt: let the task be retried after the
                    # wait instead of holding a worker slot.
                    raise RetryLater(
                        f"{failure.message} (waited {waited_for_rate_limit:.1f} s already)",
                        delay=wait,
                    )
                waited_for_rate_limit += wait
            else:
                transient_failures += 1
                if transient_failures > self._policy.transient_retries:
                    raise RetryLater(
                        f"{failure.message} (after {transient_failures} tries)"
                    )
                wait = self._policy.backoff(transient_failures)
                if failure.retry_after is not None:
                    wait = min(failure.retry_after, self._policy.backoff_max)
            await self._ctx.log(
                f"anthropic: {failure.message}; retrying in {wait:.2f} s",
                level="warning", outcome=failure.outcome,
            )
            await asyncio.sleep(wait)

    async def _send(self, params: dict[str, Any], *, stream: bool) -> tuple[Message, str | None]:
        import anthropic

        model = params["model"]
        # The limiter every daemon shares: wait for room instead of meeting a 429.
        taken_input = _input_estimate(params)
        await self._ctx.wait_for_llm_capacity(model, taken_input, params["max_tokens"])
        messages = self._client.messages
        sent = time.monotonic()

        async def learn(headers: Mapping[str, str], message: Message | None) -> None:
            # The headers count remaining capacity as of the request; what the limiter
            # took beyond the usage the API counts goes back (input written to or
            # outside the cache: cache reads do not count against an input limit).
            unused_input = unused_output = 0
            if message is not None:
                usage = message.usage
                unused_input = taken_input - usage.input_tokens - (
                    usage.cache_creation_input_tokens or 0)
                unused_output = params["max_tokens"] - usage.output_tokens
            await self._ctx.learn_llm_limits(
                model, headers, age_seconds=time.monotonic() - sent,
                unused_input_tokens=unused_input, unused_output_tokens=unused_output)

        try:
            if stream:
                async with messages.stream(**params) as events:
                    final = await events.get_final_message()
                    await learn(events.response.headers, final)
                    return final, events.request_id
            raw = await messages.with_raw_response.create(**params)
            message = await raw.parse()
            await learn(raw.headers, message)
            return message, raw.request_id
        except anthropic.APIStatusError as exc:
            await learn(exc.response.headers, None)
            raise

    def _estimate(self, model: str, params: Mapping[str, Any]) -> LLMCallEstimate:
        """The most this call may cost: the input estimate plus all of ``max_tokens``."""
        input_tokens = _input_estimate(params)
        price = self._prices.price(
            model, input_tokens=input_tokens, output_tokens=params["max_tokens"])
        return LLMCallEstimate(model, input_tokens, params["max_tokens"], price.cost_usd)

    async def _record(
        self, message: Message, requested_model: str, duration_ms: int, request_id: str | None,
        reservation: LLMReservation | None = None,
    ) -> LLMCallRecord:
        usage = message.usage
        billed_model = message.model or requested_model
        creation = usage.cache_creation_input_tokens or 0
        read = usage.cache_read_input_tokens or 0
        one_hour = usage.cache_creation.ephemeral_1h_input_tokens if usage.cache_creation else 0
        price = self._prices.price(
            billed_model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=read,
            cache_creation_1h_input_tokens=one_hour,
        )
        call = LLMCallRecord(
            model=billed_model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=creation,
            cache_read_input_tokens=read,
            cost_usd=price.cost_usd,
            price_version=price.price_version,
            stop_reason=message.stop_reason,
            duration_ms=duration_ms,
            request_id=request_id,
        )
        await self._ctx.record_llm_call(call, settles=reservation)
        if price.priced_as is None:
            await self._warn_once(
                "unpriced", billed_model,
                f"model {billed_model!r} is not in the price table {self._prices.version}; "
                "its calls are priced at the table's highest rates",
            )
        return call

    async def _warn_once(self, reason: str, model: str, message: str) -> None:
        if (reason, model) not in self._warned:
            self._warned.add((reason, model))
            await self._ctx.log(message, level="warning", model=model)


def request_fingerprint(params: Mapping[str, Any]) -> str:
    """sha256 of the request as canonical JSON (sorted keys, no spaces): model, system,
    messages, tools, max_tokens. Whether the call streams is not part of it (the answer
    does not depend on it)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Characters per token for the input estimate: English text and JSON run at 3.5 to 4,
#: and an estimate should err high (a budget check, a limiter's take).
_CHARS_PER_TOKEN: Final = 3.5


def _input_estimate(params: Mapping[str, Any]) -> int:
    """Input tokens of a request, estimated offline from its size (no API call)."""
    sized = {key: params.get(key) for key in ("system", "messages", "tools")}
    return int(len(json.dumps(sized, default=str)) / _CHARS_PER_TOKEN) + 1


def _request_params(
    model: str,
    max_tokens: int,
    messages: Sequence[MessageParam],
    system: str | None,
    tools: Sequence[ToolParam],
) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": list(messages)}
    if system:
        system_block: TextBlockParam = {
            "type": "text", "text": system, "cache_control": {"type": "ephemeral"},
        }
        params["system"] = [system_block]
    if tools:
        definitions = list(tools)
        # The marker on the last tool caches every tool definition before it too.
        definitions[-1] = cast("ToolParam", {**definitions[-1], "cache_control": dict(_EPHEMERAL)})
        params["tools"] = definitions
    return params


def _classify_status_error(exc: anthropic.APIStatusError) -> _Failure:
    status = exc.status_code
    # A stream that fails after its 200 carries the error only in its body (an SSE
    # "error" event), so the body's error type decides before the status does.
    error_type = exc.type or ""
    detail = exc.api_message or str(exc)
    request = f" (request-id {exc.request_id})" if exc.request_id else ""
    where = status if status >= 400 else "stream"
    message = f"Anthropic API {where} {error_type}: {detail}{request}"
    if status == 429 or error_type == "rate_limit_error":
        if exc.error_code == "enforced_spend_limit_reached":
            # The organisation's monthly spend limit: nothing changes until next month.
            return _Failure("permanent", "rate_limited", message)
        retry_after = _retry_after(exc)
        if retry_after is None:
            retry_after = _until_replenished(exc.response.headers)
        return _Failure("rate_limited", "rate_limited", message, retry_after)
    transient_status = status >= 500 or status in (408, 409)
    if transient_status or error_type in ("overloaded_error", "api_error", "timeout_error"):
        outcome: HttpOutcome = "server_error" if status >= 500 or status < 400 else "client_error"
        return _Failure("transient", outcome, message, _retry_after(exc))
    return _Failure("permanent", "not_found" if status == 404 else "client_error", message)


def _retry_after(exc: anthropic.APIStatusError) -> float | None:
    """Seconds from ``retry-after`` (delta-seconds, or an HTTP date), if any."""
    value = exc.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds)


def _until_replenished(headers: Mapping[str, str]) -> float | None:
    """A 429 without ``retry-after``: the seconds until the exhausted limits refill, from
    ``anthropic-ratelimit-<kind>-reset`` (RFC 3339) of each kind with nothing
    ``-remaining``; None when no header says."""
    waits = []
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        remaining = headers.get(f"anthropic-ratelimit-{kind}-remaining")
        reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
        if remaining is None or reset is None:
            continue
        try:
            if float(remaining) > 0:
                continue
            when = dt.datetime.fromisoformat(reset.replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            continue
        waits.append((when - dt.datetime.now(dt.UTC)).total_seconds())
    return max(0.0, max(waits)) if waits else None


# Reading responses -----------------------------------------------------------------


def text_of(message: Message) -> str:
    """The text blocks of a response, joined."""
    return "".join(block.text for block in message.content if block.type == "text")


def _as_param(message: Message) -> MessageParam:
    """The response as the assistant turn of the next request, block for block (the
    API wants thinking and tool_use blocks back exactly as it sent them)."""
    blocks = [cast("ContentBlockParam", block.to_dict()) for block in message.content]
    return {"role": "assistant", "content": blocks}


# The tool loop ---------------------------------------------------------------------


async def run_tool_loop(
    ctx: AgentContext,
    system: str | None,
    messages: Sequence[MessageParam],
    tools: Sequence[LoopTool],
    max_steps: int,
    *,
    model: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    stream: bool | None = None,
    policy: RetryPolicy | None = None,
    session: LLMSession | None = None,
) -> ToolLoopResult:
    """Call the model, run the tools it asks for, send back their results, repeat until
    it stops asking (``end_turn`` or any stop reason other than ``tool_use``) or
    ``max_steps`` model calls have been made.

    At the cap the loop stops *without* running the tools the last response asked for
    (nothing would read their results) and returns the last text the model wrote, with
    ``stop_reason="max_steps"``. A ``pause_turn`` is continued as the API documents:
    the paused turn is sent back as it is.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    by_name = {tool.name: tool for tool in tools}
    definitions = [tool.definition() for tool in tools]
    conversation: list[MessageParam] = list(messages)
    last_text = ""
    steps = 0
    async with _session(ctx, policy, session) as llm:
        while True:
            response = await llm.create(
                system=system, messages=conversation, tools=definitions, model=model,
                max_tokens=max_tokens, stream=stream,
            )
            steps += 1
            conversation.append(_as_param(response))
            text = text_of(response)
            last_text = text or last_text
            stop_reason = response.stop_reason or "end_turn"
            tool_uses = [block for block in response.content if block.type == "tool_use"]
            wants_more = stop_reason == "pause_turn" or (stop_reason == "tool_use" and tool_uses)
            if not wants_more:
                return ToolLoopResult(last_text, stop_reason, steps, conversation)
            if steps >= max_steps:
                return ToolLoopResult(last_text, "max_steps", steps, conversation)
            if stop_reason == "pause_turn":
                continue
            results: list[ToolResultBlockParam] = []
            for block in tool_uses:
                outcome = await _journaled_invoke(
                    ctx, by_name.get(block.name), block.id, block.name, block.input,
                    step=llm.last_step, turn=llm.last_fingerprint,
                )
                result: ToolResultBlockParam = {
                    "type": "tool_result", "tool_use_id": block.id, "content": outcome.content,
                }
                if outcome.is_error:
                    result["is_error"] = True
                results.append(result)
            conversation.append({"role": "user", "content": results})


async def _journaled_invoke(
    ctx: AgentContext, tool: LoopTool | None, tool_use_id: str, name: str, arguments: object,
    *, step: int, turn: str,
) -> ToolOutcome:
    """Run one tool call, or replay its result from an earlier attempt of the task (the
    same ``tool_use`` block of the same model turn, ``turn`` being that turn's request
    fingerprint): a side-effecting tool never runs twice."""
    fingerprint = hashlib.sha256(json.dumps(
        {"turn": turn, "tool_use_id": tool_use_id, "name": name, "input": arguments},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    ).encode()).hexdigest()
    recorded = await ctx.journal_lookup(step, fingerprint, tool_use_id=tool_use_id)
    began = time.monotonic()
    if recorded is not None:
        outcome = ToolOutcome(str(recorded["output"]), bool(recorded.get("is_error")),
                              recorded.get("effects"))
        if tool is not None and outcome.effects is not None:
            tool.restore(outcome.effects)
        await ctx.log(f"tool {name}: replayed from an earlier attempt",
                      level="tool_error" if outcome.is_error else "tool_success",
                      tool=name, replayed=True)
    else:
        outcome = await _invoke(ctx, tool, name, arguments)
    await ctx.journal_tool_result(JournaledToolResult(
        step, tool_use_id, fingerprint, name, arguments, outcome.content, outcome.is_error,
        outcome.effects, duration_ms=int((time.monotonic() - began) * 1000),
    ), replayed=recorded is not None)
    return outcome


async def _invoke(
    ctx: AgentContext, tool: LoopTool | None, name: str, arguments: object
) -> ToolOutcome:
    if tool is None:
        # The model asked for a tool it was not offered: tell it, it can recover.
        outcome = ToolOutcome(f"unknown tool {name!r}", is_error=True)
    elif not isinstance(arguments, Mapping):
        outcome = ToolOutcome("tool input must be a JSON object", is_error=True)
    else:
        outcome = await tool.invoke(arguments)
    if len(outcome.content) > MAX_TOOL_RESULT_CHARS:
        outcome = dataclasses.replace(
            outcome, content=outcome.content[:MAX_TOOL_RESULT_CHARS] + " ...[truncated]"
        )
    await ctx.log(
        f"tool {name}: {'error: ' + outcome.content[:200] if outcome.is_error else 'ok'}",
        level="tool_error" if outcome.is_error else "tool_success",
        tool=name,
    )
    return outcome


@contextlib.asynccontextmanager
async def _session(
    ctx: AgentContext, policy: RetryPolicy | None, session: LLMSession | None
) -> AsyncIterator[LLMSession]:
    """The given session (left open) or a new one for the call (closed after)."""
    if session is not None:
        yield session
        return
    async with LLMSession(ctx, policy=policy) as made:
        yield made


# Structured answers ------------------------------------------------------------------


async def complete_json(
    ctx: AgentContext,
    *,
    system: str,
    prompt: str,
    output: type[M],
    model: str | None = None,
    max_tokens: int = 1024,
    policy: RetryPolicy | None = None,
    session: LLMSession | None = None,
) -> M:
    """Ask for one JSON object and validate it as ``output``.

    JSON in a text answer rather than a forced tool call: the newest models reject
    forced tool use. One malformed reply gets one correction turn (the error goes back
    to the model); a second one raises :class:`RetryLater`, since a fresh attempt is
    the remaining remedy for a model's bad day.
    """
    conversation: list[MessageParam] = [{"role": "user", "content": prompt}]
    async with _session(ctx, policy, session) as llm:
        for attempt in (1, 2):
            response = await llm.create(
                system=system, messages=conversation, model=model, max_tokens=max_tokens,
            )
            text = text_of(response)
            try:
                return output.model_validate_json(_json_object_in(text))
            except (ValueError, ValidationError) as exc:
                problem = _short_problem(exc)
                if attempt == 2:
                    raise InvalidModelAnswer(
                        f"model answer is not a valid {output.__name__}: {problem}"
                    ) from None
            conversation += [
                _as_param(response) if response.content
                else {"role": "assistant", "content": "(no answer)"},
                {"role": "user", "content": (
                    f"That answer was not valid: {problem}. Reply with only the JSON "
                    "object, nothing before or after it."
                )},
            ]
    raise AssertionError("unreachable")


def _json_object_in(text: str) -> str:
    """The outermost ``{...}`` of a reply (models like to wrap JSON in prose or fences)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the answer")
    candidate = text[start:end + 1]
    json.loads(candidate)  # a clear JSON error before pydantic's less specific one
    return candidate


def _short_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc, root="object", limit=5)
    return str(exc)[:300]
