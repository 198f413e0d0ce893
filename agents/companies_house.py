"""An async client for the Companies House public data API (the three calls the agents
need), polite about the rate limit and explicit about every outcome.

Facts relied on, and where they come from:

* Authentication is HTTP basic auth with the API key as the user name and an empty
  password (``curl -u my_api_key:``) — developer-specs.company-information.service.gov.uk
  /guides/authorisation and developer.company-information.service.gov.uk/authentication.
* The default rate limit is 600 requests per five-minute window per key; past it every
  request gets ``429 Too Many Requests`` until the window resets — .../guides/rateLimiting
  and the developer guidelines page. Responses carry ``X-Ratelimit-Limit``,
  ``X-Ratelimit-Remain``, ``X-Ratelimit-Reset`` (epoch seconds) and
  ``X-Ratelimit-Window`` (e.g. ``5m``) — Companies House developer forum threads
  "Companies House API Limits" (8626) and "Rate limit header naming issue" (245); the
  latter notes ``X-Ratelimit-Remaining`` on the document API, so both spellings are read.
  A 429 may come without ``Retry-After``; the reset header is what to wait for.
* ``GET /company/{number}`` answers 404 with
  ``{"errors": [{"type": "ch:service", "error": "company-profile-not-found"}]}`` for an
  unknown number, and a 500 for a malformed one (not 8 characters) — forum thread
  "Non-existing company number returns 500" (8468). Numbers are ``[A-Z0-9]{8}``, so this
  client pads all-digit numbers with leading zeros and never sends a malformed one.
* ``GET /company/{number}/officers`` returns an ``officer-list``: ``items``
  (``name``, ``officer_role``, ``appointed_on``, ``resigned_on``, ...),
  ``active_count``, ``resigned_count``, ``inactive_count``, ``total_results``,
  ``items_per_page``, ``start_index`` — the officerList JSON schema of the public spec.
  Current appointments come first (latest appointment first), then resigned ones
  (latest resignation first) — forum thread 488.
* ``GET /company/{number}/filing-history`` returns a ``filingHistoryList``: ``items``
  (``category``, ``type`` - the form, e.g. ``SH01``, ``AP01``, ``AA`` -, ``date`` - when
  the filing was processed -, ``description`` - a key of the api-enumerations file
  ``filing_history_descriptions.yml``, e.g. ``capital-allotment-shares`` -,
  ``description_values``, ``transaction_id``, ``links``, ...), ``total_count``,
  ``items_per_page``, ``start_index``, ``kind: "filing-history"``; newest first; query
  parameters ``category`` (comma-separated), ``items_per_page`` (at most 100) and
  ``start_index`` — the filingHistoryList / filingHistoryItem resources of the public
  data API reference.
* ``GET /advanced-search/companies`` takes ``company_name_includes``, ``location``,
  ``incorporated_from`` / ``incorporated_to`` (ISO dates), ``company_status``,
  ``sic_codes``, ``company_type`` (lists, comma-separated), ``size`` and ``start_index``,
  and returns ``{"kind", "hits", "items": [...], "top_hit", "etag"}`` whose items have
  ``company_name``, ``company_number``, ``company_status``, ``company_type``,
  ``date_of_creation``, ``registered_office_address``, ``sic_codes`` — the
  AdvancedSearchController, AdvancedQueryParamMapper and SearchResults/Company models of
  github.com/companieshouse/search.api.ch.gov.uk. ``size`` is capped server-side
  (5000 per the published spec as quoted by its users); this client refuses more.
* Resources gain members over time and clients must tolerate unknown ones (developer
  guidelines, "Data resources"), so the models below keep extra members.

Outcomes: a 404 is a :class:`NotFound` *result*; other 4xx raise
:class:`CompaniesHouseRejected` (a :class:`~runner.api.FailPermanently`: retrying the
same request cannot help); 429, 5xx, timeouts and transport errors are retried a bounded
number of times and then raise :class:`CompaniesHouseUnavailable`. Every HTTP request is
reported through ``observe("companies_house", outcome)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date
from typing import Any, Final, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from runner.api import FailPermanently, backoff_delay

__all__ = [
    "Accounts",
    "AdvancedSearchCompany",
    "AdvancedSearchResult",
    "CompaniesHouseBadResponse",
    "CompaniesHouseClient",
    "CompaniesHouseError",
    "CompaniesHouseRejected",
    "CompaniesHouseUnavailable",
    "CompanyProfile",
    "FilingHistory",
    "FilingHistoryItem",
    "NotFound",
    "Officer",
    "OfficerList",
    "RegisteredAddress",
    "RetryPolicy",
    "normalise_company_number",
]

SERVICE: Final = "companies_house"
MAX_SEARCH_SIZE: Final = 5000
#: The officers list pages at most this many items (the API's own maximum per page).
MAX_OFFICERS_PAGE: Final = 100
#: The filing history pages at most this many items (the API's maximum per page).
MAX_FILINGS_PAGE: Final = 100
_COMPANY_NUMBER: Final = re.compile(r"^[A-Z0-9]{8}$")
#: Added to the server's reset time: it is whole seconds and our clocks may differ a
#: little, and a request that lands just before the reset would be refused.
_RESET_MARGIN: Final = 0.1

ObserveCall = Callable[[str, str], None]
Sleep = Callable[[float], Awaitable[None]]


# Errors and results --------------------------------------------------------------------


class CompaniesHouseError(Exception):
    """Base of everything this client raises."""


class CompaniesHouseRejected(CompaniesHouseError, FailPermanently):
    """A 4xx other than 404 and 429: the request itself is wrong (or the key is)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Companies House rejected the request: HTTP {status_code}: {message}")
        self.status_code = status_code
        self.api_message = message


class CompaniesHouseUnavailable(CompaniesHouseError):
    """Transient failures (429, 5xx, timeouts, transport errors) outlasted the retries."""

    def __init__(self, message: str, *, last_outcome: str, attempts: int) -> None:
        super().__init__(message)
        self.last_outcome = last_outcome
        self.attempts = attempts


class CompaniesHouseBadResponse(CompaniesHouseError):
    """A 2xx whose body is not the documented resource."""


@dataclasses.dataclass(frozen=True, slots=True)
class NotFound:
    """The resource does not exist (HTTP 404, or a number that cannot exist)."""

    resource: str
    reason: str = "not found"


# Resources -----------------------------------------------------------------------------


class _Resource(BaseModel):
    # Unknown members are kept: the API adds members over time.
    model_config = ConfigDict(extra="allow", frozen=True)


class RegisteredAddress(_Resource):
    premises: str | None = None
    address_line_1: str | None = None
    address_line_2: str | None = None
    locality: str | None = None
    region: str | None = None
    postal_code: str | None = None
    country: str | None = None


class LastAccounts(_Resource):
    made_up_to: date | None = None
    period_end_on: date | None = None
    type: str | None = None


class Accounts(_Resource):
    last_accounts: LastAccounts | None = None
    next_due: date | None = None
    overdue: bool | None = None


class CompanyProfile(_Resource):
    company_number: str
    company_name: str = ""
    company_status: str | None = None
    type: str | None = None
    jurisdiction: str | None = None
    date_of_creation: date | None = None
    date_of_cessation: date | None = None
    registered_office_address: RegisteredAddress | None = None
    sic_codes: list[str] = []
    accounts: Accounts | None = None
    has_charges: bool | None = None
    has_insolvency_history: bool | None = None


class Officer(_Resource):
    name: str = ""
    officer_role: str | None = None
    appointed_on: date | None = None
    resigned_on: date | None = None
    occupation: str | None = None
    nationality: str | None = None
    country_of_residence: str | None = None


class OfficerList(_Resource):
    items: list[Officer] = []
    active_count: int = 0
    resigned_count: int = 0
    inactive_count: int = 0
    total_results: int = 0
    items_per_page: int | None = None
    start_index: int = 0


class FilingHistoryItem(_Resource):
    # Required by the spec; tolerated when missing so that one odd item (old paper
    # filings carry less) does not lose the page. Users skip items without them.
    transaction_id: str = ""
    category: str = ""
    type: str = ""
    #: ``date`` in the API (a member named ``date`` would shadow the type here).
    filed_on: date | None = Field(default=None, alias="date")
    description: str = ""
    description_values: dict[str, Any] = {}
    subcategory: str | None = None


class FilingHistory(_Resource):
    items: list[FilingHistoryItem] = []
    total_count: int = 0
    items_per_page: int | None = None
    start_index: int = 0
    filing_history_status: str | None = None


class AdvancedSearchCompany(_Resource):
    company_number: str
    company_name: str = ""
    company_status: str | None = None
    company_type: str | None = None
    date_of_creation: date | None = None
    date_of_cessation: date | None = None
    registered_office_address: RegisteredAddress | None = None
    sic_codes: list[str] = []


class AdvancedSearchResult(_Resource):
    kind: str | None = None
    hits: int = 0
    items: list[AdvancedSearchCompany] = []


_Model = TypeVar("_Model", bound=_Resource)


def normalise_company_number(number: str) -> str | None:
    """The 8-character form (``"1234"`` -> ``"00001234"``), or None if it cannot exist."""
    cleaned = re.sub(r"\s+", "", number).upper()
    if cleaned.isdigit():
        cleaned = cleaned.zfill(8)
    return cleaned if _COMPANY_NUMBER.match(cleaned) else None


# Rate limiting -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Requests per call, counting the first; 429, 5xx, timeouts and transport errors
    #: use up attempts.
    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    #: Longest single wait for a rate-limit window to reset. The real window is five
    #: minutes; waiting longer than this means we give up on this call instead.
    max_rate_limit_wait: float = 60.0
    #: Start spreading requests evenly over the rest of the window once fewer than this
    #: fraction of the limit remains.
    pace_below_fraction: float = 0.1
    request_timeout: float = 15.0


class _RateLimiter:
    """What the server last told us about our window, and the pacing derived from it.

    Callers queue on a lock so that concurrent enrichments draw from one budget: each
    reservation decrements the remaining count locally, and each response corrects it
    with the server's figures."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float], sleep: Sleep) -> None:
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self.limit: int | None = None
        self.remain: int | None = None
        self.reset_at: float | None = None

    async def acquire(self) -> None:
        async with self._lock:
            delay = self._delay()
            if delay > 0:
                # Sleeping under the lock is the point: later callers wait their turn.
                await self._sleep(delay)
            self._roll_window()
            if self.remain is not None:
                self.remain -= 1

    def _roll_window(self) -> None:
        if self.reset_at is not None and self._clock() >= self.reset_at:
            self.remain = self.limit
            self.reset_at = None

    def _delay(self) -> float:
        self._roll_window()
        if self.remain is None or self.reset_at is None:
            return 0.0
        left = max(0.0, self.reset_at - self._clock())
        if self.remain <= 0:
            return min(left, self._policy.max_rate_limit_wait)
        threshold = max(1.0, (self.limit or 0) * self._policy.pace_below_fraction)
        if self.remain < threshold:
            return min(left / self.remain, self._policy.max_rate_limit_wait)
        return 0.0

    def update(self, headers: httpx.Headers) -> None:
        limit = _int_header(headers, "x-ratelimit-limit")
        remain = _int_header(headers, "x-ratelimit-remain")
        if remain is None:
            remain = _int_header(headers, "x-ratelimit-remaining")
        reset = _float_header(headers, "x-ratelimit-reset")
        if limit is not None:
            self.limit = limit
        if remain is not None and reset is not None:
            self.remain, self.reset_at = remain, reset + _RESET_MARGIN

    def exhausted(self, headers: httpx.Headers, fallback_wait: float) -> None:
        """After a 429: nothing left until the reset (or a short fallback wait)."""
        reset = _float_header(headers, "x-ratelimit-reset")
        soonest = self._clock() + fallback_wait
        # A reset already in the past (clock skew) must still cost a short pause.
        self.reset_at = max(reset + _RESET_MARGIN, soonest) if reset is not None else soonest
        self.remain = 0


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = _float_header(headers, name)
    return None if value is None else int(value)


def _float_header(headers: httpx.Headers, name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw.strip())
    except ValueError:
        return None


# The client ----------------------------------------------------------------------------


class CompaniesHouseClient:
    """One instance per agent run; safe to share between concurrent tasks."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: SecretStr | str,
        base_url: str,
        observe: ObserveCall | None = None,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._http = http
        # The key is the user name, the password is empty (see the module docstring).
        self._auth = httpx.BasicAuth(key, "")
        self._base_url = base_url.rstrip("/")
        self._observe = observe
        self._policy = policy or RetryPolicy()
        self._sleep = sleep
        self._limiter = _RateLimiter(self._policy, clock, sleep)

    async def get_profile(self, company_number: str) -> CompanyProfile | NotFound:
        number = normalise_company_number(company_number)
        if number is None:
            return NotFound("company", f"invalid company number {company_number!r}")
        return await self._get(f"/company/{number}", None, CompanyProfile, "company")

    async def get_officers(
        self, company_number: str, *, items_per_page: int = MAX_OFFICERS_PAGE,
        start_index: int = 0,
    ) -> OfficerList | NotFound:
        """One page of officers (the newest appointments and resignations come first,
        which is what the growth heuristics look at)."""
        number = normalise_company_number(company_number)
        if number is None:
            return NotFound("officers", f"invalid company number {company_number!r}")
        params = {
            "items_per_page": str(max(1, min(items_per_page, MAX_OFFICERS_PAGE))),
            "start_index": str(max(0, start_index)),
        }
        return await self._get(f"/company/{number}/officers", params, OfficerList, "officers")

    async def get_filing_history(
        self, company_number: str, *, items_per_page: int = MAX_FILINGS_PAGE,
        category: Sequence[str] = (),
    ) -> FilingHistory | NotFound:
        """The first page of the company's filings, newest first."""
        number = normalise_company_number(company_number)
        if number is None:
            return NotFound("filing-history", f"invalid company number {company_number!r}")
        params = {"items_per_page": str(max(1, min(items_per_page, MAX_FILINGS_PAGE))),
                  "start_index": "0"}
        if category:
            params["category"] = ",".join(category)
        return await self._get(f"/company/{number}/filing-history", params, FilingHistory,
                               "filing-history")

    async def advanced_search(
        self,
        *,
        sic_codes: Sequence[str] = (),
        location: str | None = None,
        incorporated_from: date | None = None,
        incorporated_to: date | None = None,
        company_status: Sequence[str] = (),
        company_type: Sequence[str] = (),
        company_name_includes: str | None = None,
        size: int = 20,
        start_index: int = 0,
    ) -> AdvancedSearchResult:
        if not 1 <= size <= MAX_SEARCH_SIZE:
            raise ValueError(f"size must be between 1 and {MAX_SEARCH_SIZE}")
        params: dict[str, str] = {"size": str(size), "start_index": str(max(0, start_index))}
        if sic_codes:
            params["sic_codes"] = ",".join(sic_codes)
        if company_status:
            params["company_status"] = ",".join(company_status)
        if company_type:
            params["company_type"] = ",".join(company_type)
        if location:
            params["location"] = location
        if company_name_includes:
            params["company_name_includes"] = company_name_includes
        if incorporated_from:
            params["incorporated_from"] = incorporated_from.isoformat()
        if incorporated_to:
            params["incorporated_to"] = incorporated_to.isoformat()
        result = await self._get(
            "/advanced-search/companies", params, AdvancedSearchResult, "search"
        )
        # No match may come back as a 404; for a search that is simply an empty page.
        return AdvancedSearchResult(hits=0, items=[]) if isinstance(result, NotFound) else result

    # The request loop -----------------------------------------------------------------

    async def _get(
        self,
        path: str,
        params: Mapping[str, str] | None,
        model: type[_Model],
        resource: str,
    ) -> _Model | NotFound:
        url = self._base_url + path
        policy = self._policy
        last = "no attempt made"
        last_outcome = "error"
        for attempt in range(1, policy.max_attempts + 1):
            await self._limiter.acquire()
            try:
                response = await self._http.get(
                    url, params=params, auth=self._auth, timeout=policy.request_timeout,
                    headers={"Accept": "application/json"},
                )
            except httpx.TimeoutException:
                last_outcome, last = "timeout", f"timed out after {policy.request_timeout:g} s"
                self._count("timeout")
                await self._backoff(attempt, None)
                continue
            except httpx.HTTPError as exc:
                last_outcome, last = "error", f"{type(exc).__name__}: {exc}"
                self._count("error")
                await self._backoff(attempt, None)
                continue

            self._limiter.update(response.headers)
            status = response.status_code
            if 200 <= status < 300:
                self._count("ok")
                return _parse(response, model, path)
            if status == 404:
                self._count("not_found")
                return NotFound(resource, _api_message(response))
            if status == 429:
                self._count("rate_limited")
                last_outcome, last = "rate_limited", "HTTP 429 Too Many Requests"
                # The next acquire() waits for the window to reset (capped).
                self._limiter.exhausted(response.headers, self._backoff_delay(attempt))
                continue
            if status >= 500:
                self._count("server_error")
                last_outcome, last = "server_error", f"HTTP {status}: {_api_message(response)}"
                await self._backoff(attempt, response.headers.get("retry-after"))
                continue
            self._count("client_error")
            raise CompaniesHouseRejected(status, _api_message(response))
        raise CompaniesHouseUnavailable(
            f"Companies House {resource} request failed after {policy.max_attempts} "
            f"attempts: {last}",
            last_outcome=last_outcome, attempts=policy.max_attempts,
        )

    def _backoff_delay(self, attempt: int) -> float:
        return backoff_delay(attempt, base=self._policy.backoff_base, cap=self._policy.backoff_max)

    async def _backoff(self, attempt: int, retry_after: str | None) -> None:
        if attempt >= self._policy.max_attempts:
            return
        delay = self._backoff_delay(attempt)
        if retry_after is not None:
            try:
                delay = min(self._policy.backoff_max, max(delay, float(retry_after)))
            except ValueError:
                pass  # an HTTP-date Retry-After; the computed backoff will do
        await self._sleep(delay)

    def _count(self, outcome: str) -> None:
        if self._observe is not None:
            self._observe(SERVICE, outcome)


def _parse(response: httpx.Response, model: type[_Model], path: str) -> _Model:
    try:
        return model.model_validate(response.json())
    except (ValueError, ValidationError) as exc:
        raise CompaniesHouseBadResponse(
            f"unexpected response from {path}: {str(exc).splitlines()[0]}"
        ) from None


def _api_message(response: httpx.Response) -> str:
    """The API's own error text: ``{"error": ...}`` or ``{"errors": [{"error": ...}]}``."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("errors"), list):
            texts = [
                str(item.get("error") or item.get("message") or item)
                for item in body["errors"] if isinstance(item, dict)
            ]
            if texts:
                return "; ".join(texts)
        for key in ("error", "message"):
            if body.get(key):
                return str(body[key])
    return response.reason_phrase
