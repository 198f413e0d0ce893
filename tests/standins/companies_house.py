"""A Companies House public data API stand-in: the resources the agents use (profile,
officers, filing history, advanced search), with
the real JSON shapes, basic auth, the ``X-Ratelimit-*`` headers and a real rate-limit
window, plus switches for the failures the client must survive.

Usage::

    with running_companies_house(api_key="k") as ch:
        ch.add_company("01234567", name="ACME LTD", officers=[officer("SMITH, Jane")],
                       filings=[filing("SH01", "2026-11-20", transaction_id="MzA")])
        ch.fail("/company/01234567", status=500, times=2)
        ...  # point COMPANIES_HOUSE_BASE_URL at ch.url
        assert ch.requests[0].authorization == basic_auth("k")

The window's reset is whole epoch seconds, as the real header is, so the stand-in's own
window ends exactly when the header says.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.standins.server import QuietHandler, serve_in_background

__all__ = [
    "CompaniesHouseStandIn",
    "RecordedRequest",
    "basic_auth",
    "companies_house_server",
    "filing",
    "officer",
    "running_companies_house",
]


def basic_auth(api_key: str) -> str:
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())


def officer(
    name: str,
    *,
    role: str = "director",
    appointed_on: date | str = "2015-01-01",
    resigned_on: date | str | None = None,
    occupation: str = "Director",
) -> dict[str, Any]:
    """One officer-list item, as the API shapes it."""
    item: dict[str, Any] = {
        "name": name,
        "officer_role": role,
        "appointed_on": str(appointed_on),
        "occupation": occupation,
        "nationality": "British",
        "country_of_residence": "England",
        "address": {"address_line_1": "1 High Street", "locality": "London",
                    "postal_code": "EC1A 1AA"},
        "links": {"officer": {"appointments": f"/officers/{_slug(name)}/appointments"}},
    }
    if resigned_on is not None:
        item["resigned_on"] = str(resigned_on)
    return item


# Forms as the filing history lists them: (category, description key).
_FORMS: dict[str, tuple[str, str]] = {
    "SH01": ("capital", "capital-allotment-shares"),
    "AP01": ("officers", "appoint-person-director-company-with-name-date"),
    "AP03": ("officers", "appoint-person-secretary-company-with-name-date"),
    "TM01": ("officers", "termination-director-company-with-name-termination-date"),
    "AA": ("accounts", "accounts-with-accounts-type-small"),
    "CS01": ("confirmation-statement", "confirmation-statement-with-no-updates"),
    "MR01": ("mortgage", "mortgage-create-with-deed-with-charge-number-charge-creation-date"),
    "NM01": ("change-of-name", "change-of-name-by-resolution"),
    "AD01": ("address",
             "change-registered-office-address-company-with-date-old-address-new-address"),
    "NEWINC": ("incorporation", "incorporation-company"),
}


def filing(
    form: str,
    filed_on: date | str,
    *,
    transaction_id: str | None = None,
    description_values: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One filing-history item, as the API shapes it (``date`` is when it was
    processed; ``description`` a key of the api-enumerations descriptions file)."""
    category, description = _FORMS[form]
    day = str(filed_on)
    values = dict(description_values or {})
    if form == "SH01":
        values.setdefault("date", day)
        values.setdefault("capital", [{"currency": "GBP", "figure": "2,151"}])
    elif form in ("AP01", "AP03"):
        values.setdefault("appointment_date", day)
        values.setdefault("officer_name", "Ms Jane Example")
    elif form == "TM01":
        values.setdefault("termination_date", day)
        values.setdefault("officer_name", "Mr John Example")
    elif form == "AA":
        values.setdefault("made_up_date", "2025-03-31")
    txid = transaction_id or f"{form}{day.replace('-', '')}"
    item: dict[str, Any] = {
        "category": category,
        "date": day,
        "description": description,
        "description_values": values,
        "type": form,
        "transaction_id": txid,
        "barcode": f"X{txid[-7:]}",
        "pages": 3,
        "links": {"self": f"/company/00000000/filing-history/{txid}",
                  "document_metadata": f"https://document-api.example/document/{txid}"},
    }
    item.update(extra)
    return item


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None
    at: float
    status: int
    #: The ``X-Ratelimit-*`` headers sent back.
    rate_headers: dict[str, str]


@dataclasses.dataclass
class _FailurePlan:
    path_prefix: str
    status: int
    remaining: int | None  # None: forever


class CompaniesHouseStandIn:
    def __init__(self, *, api_key: str, limit: int, window_seconds: float) -> None:
        self.api_key = api_key
        self.url = ""
        self.companies: dict[str, dict[str, Any]] = {}
        self.officers: dict[str, list[dict[str, Any]]] = {}
        self.filings: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._failures: list[_FailurePlan] = []
        self._forced_429: int = 0
        self._forced_429_reset_in: float = 1.0
        self.limit = limit
        self.window_seconds = window_seconds
        self._remain = limit
        self._reset_at = math.ceil(time.time() + window_seconds)

    # Set-up ------------------------------------------------------------------------------

    def add_company(
        self,
        number: str,
        *,
        name: str = "EXAMPLE LTD",
        status: str = "active",
        company_type: str = "ltd",
        date_of_creation: str = "2015-03-02",
        sic_codes: list[str] | None = None,
        locality: str = "London",
        postal_code: str = "EC1A 1AA",
        accounts_type: str | None = "small",
        accounts_made_up_to: str | None = "2024-03-31",
        has_charges: bool = False,
        officers: list[dict[str, Any]] | None = None,
        filings: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        profile: dict[str, Any] = {
            "company_number": number,
            "company_name": name,
            "company_status": status,
            "type": company_type,
            "jurisdiction": "england-wales",
            "date_of_creation": date_of_creation,
            "registered_office_address": {
                "address_line_1": "1 High Street", "locality": locality,
                "postal_code": postal_code, "country": "United Kingdom",
            },
            "sic_codes": sic_codes or ["62012"],
            "accounts": {
                "accounting_reference_date": {"day": "31", "month": "03"},
                "next_due": "2025-12-31",
                "overdue": False,
            },
            "has_charges": has_charges,
            "has_insolvency_history": False,
            "can_file": True,
            "etag": f"etag-{number}",
            "links": {"self": f"/company/{number}"},
            "undocumented_member": {"kept": True},
        }
        if accounts_type is not None:
            profile["accounts"]["last_accounts"] = {
                "made_up_to": accounts_made_up_to, "type": accounts_type,
            }
        profile.update(extra)
        with self._lock:
            self.companies[number] = profile
            self.officers[number] = list(officers or [])
            self.filings[number] = list(filings or [])
        return profile

    def fail(self, path_prefix: str, *, status: int = 500, times: int | None = 1) -> None:
        """Answer requests whose path starts with ``path_prefix`` with ``status``,
        ``times`` times (None: for ever)."""
        with self._lock:
            self._failures.append(_FailurePlan(path_prefix, status, times))

    def rate_limit_next(self, times: int = 1, *, reset_in: float = 1.0) -> None:
        """Exhaust the window now: the next ``times`` requests get 429 and a reset
        ``reset_in`` seconds ahead (rounded up to whole epoch seconds)."""
        with self._lock:
            self._forced_429 = times
            self._forced_429_reset_in = reset_in
            self._remain = 0
            self._reset_at = math.ceil(time.time() + reset_in)

    def set_window(self, *, remain: int, reset_in: float, limit: int | None = None) -> None:
        with self._lock:
            if limit is not None:
                self.limit = limit
            self._remain = remain
            self._reset_at = math.ceil(time.time() + reset_in)

    def count(self, status: int) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.status == status)

    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    # Serving -----------------------------------------------------------------------------

    def respond(self, method: str, raw_path: str, authorization: str | None
                ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        with self._lock:
            status, headers, body = self._respond_locked(parts.path, query, authorization)
            self.requests.append(RecordedRequest(
                method, parts.path, query, authorization, time.time(), status, dict(headers),
            ))
        return status, headers, body

    def _window_headers(self) -> dict[str, str]:
        window = "5m" if self.window_seconds == 300 else f"{self.window_seconds:g}s"
        return {
            "X-Ratelimit-Limit": str(self.limit),
            "X-Ratelimit-Remain": str(max(0, self._remain)),
            "X-Ratelimit-Reset": str(self._reset_at),
            "X-Ratelimit-Window": window,
        }

    def _respond_locked(self, path: str, query: dict[str, list[str]],
                        authorization: str | None) -> tuple[int, dict[str, str], Any]:
        now = time.time()
        if now >= self._reset_at:
            self._remain = self.limit
            self._reset_at = math.ceil(now + self.window_seconds)
        if authorization != basic_auth(self.api_key):
            return 401, self._window_headers(), {"error": "Invalid Authorization",
                                                 "type": "ch:service"}
        if self._forced_429 > 0 or self._remain <= 0:
            self._forced_429 = max(0, self._forced_429 - 1)
            return 429, self._window_headers(), {"error": "Too Many Requests"}
        self._remain -= 1
        headers = self._window_headers()
        for plan in self._failures:
            if path.startswith(plan.path_prefix) and plan.remaining != 0:
                if plan.remaining is not None:
                    plan.remaining -= 1
                if plan.status >= 500:
                    return plan.status, headers, {"exception_id": "standin",
                                                  "error": "Internal server error"}
                return plan.status, headers, {"errors": [{"error": f"standin-{plan.status}",
                                                          "type": "ch:service"}]}
        segments = [s for s in path.split("/") if s]
        if len(segments) == 2 and segments[0] == "company":
            return self._profile(segments[1], headers)
        if len(segments) == 3 and segments[0] == "company" and segments[2] == "officers":
            return self._officer_list(segments[1], query, headers)
        if len(segments) == 3 and segments[0] == "company" and segments[2] == "filing-history":
            return self._filing_history(segments[1], query, headers)
        if segments == ["advanced-search", "companies"]:
            return self._search(query, headers)
        return 404, headers, {"errors": [{"error": "not-found", "type": "ch:service"}]}

    def _profile(self, number: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        profile = self.companies.get(number)
        if profile is None:
            return 404, headers, {"errors": [{"type": "ch:service",
                                              "error": "company-profile-not-found"}]}
        return 200, headers, profile

    def _officer_list(self, number: str, query: dict[str, list[str]],
                      headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if number not in self.companies:
            return 404, headers, {"errors": [{"type": "ch:service",
                                              "error": "company-officers-not-found"}]}
        # The API lists current appointments (latest first), then resigned ones
        # (latest resignation first).
        everyone = self.officers[number]
        active = sorted((o for o in everyone if "resigned_on" not in o),
                        key=lambda o: o["appointed_on"], reverse=True)
        resigned = sorted((o for o in everyone if "resigned_on" in o),
                          key=lambda o: o["resigned_on"], reverse=True)
        ordered = active + resigned
        per_page = int(query.get("items_per_page", ["35"])[0])
        start = int(query.get("start_index", ["0"])[0])
        return 200, headers, {
            "kind": "officer-list",
            "etag": f"officers-{number}",
            "links": {"self": f"/company/{number}/officers"},
            "items_per_page": per_page,
            "start_index": start,
            "total_results": len(ordered),
            "active_count": len(active),
            "inactive_count": 0,
            "resigned_count": len(resigned),
            "items": ordered[start:start + per_page],
        }

    def _filing_history(self, number: str, query: dict[str, list[str]],
                        headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if number not in self.companies:
            return 404, headers, {"errors": [{"type": "ch:service",
                                              "error": "filing-history-not-found"}]}
        categories = {c for raw in query.get("category", []) for c in raw.split(",") if c}
        # Newest first, as the API lists them.
        items = sorted((f for f in self.filings[number]
                        if not categories or f["category"] in categories),
                       key=lambda f: f["date"], reverse=True)
        per_page = min(100, int(query.get("items_per_page", ["25"])[0]))
        start = int(query.get("start_index", ["0"])[0])
        return 200, headers, {
            "etag": f"filings-{number}",
            "filing_history_status": "filing-history-available",
            "kind": "filing-history",
            "items_per_page": per_page,
            "start_index": start,
            "total_count": len(items),
            "items": items[start:start + per_page],
        }

    def _search(self, query: dict[str, list[str]],
                headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        def values(name: str) -> list[str]:
            return [v for raw in query.get(name, []) for v in raw.split(",") if v]

        size = int(query.get("size", ["20"])[0])
        if not 1 <= size <= 5000:
            return 400, headers, {"errors": [{"error": "advanced-search-size-parameter-error",
                                              "type": "ch:service"}]}
        start = int(query.get("start_index", ["0"])[0])
        sic = set(values("sic_codes"))
        statuses = set(values("company_status"))
        location = (query.get("location", [""])[0]).lower()
        inc_from = query.get("incorporated_from", [""])[0]
        inc_to = query.get("incorporated_to", [""])[0]
        matches = []
        for number in sorted(self.companies):
            profile = self.companies[number]
            address = profile["registered_office_address"]
            if sic and not sic & set(profile["sic_codes"]):
                continue
            if statuses and profile["company_status"] not in statuses:
                continue
            if location and location not in (
                f"{address.get('locality', '')} {address.get('postal_code', '')}".lower()
            ):
                continue
            if inc_from and profile["date_of_creation"] < inc_from:
                continue
            if inc_to and profile["date_of_creation"] > inc_to:
                continue
            matches.append({
                "company_name": profile["company_name"],
                "company_number": number,
                "company_status": profile["company_status"],
                "company_type": profile["type"],
                "kind": "search-results#company",
                "links": {"company_profile": f"/company/{number}"},
                "date_of_creation": profile["date_of_creation"],
                "registered_office_address": address,
                "sic_codes": profile["sic_codes"],
            })
        page = matches[start:start + size]
        return 200, headers, {
            "etag": "search-etag",
            "kind": "search#advanced-search",
            "hits": len(matches),
            "items": page,
            "top_hit": page[0] if page else None,
        }


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        standin: CompaniesHouseStandIn = self.server.state
        status, headers, body = standin.respond("GET", self.path,
                                                self.headers.get("Authorization"))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def running_companies_house(
    *, api_key: str = "k", limit: int = 600, window_seconds: float = 300.0,
) -> Iterator[CompaniesHouseStandIn]:
    standin = CompaniesHouseStandIn(api_key=api_key, limit=limit, window_seconds=window_seconds)
    with serve_in_background(_Handler, standin) as url:
        standin.url = url
        yield standin


@pytest.fixture
def companies_house_server() -> Iterator[CompaniesHouseStandIn]:
    """A fresh stand-in per test; API key ``"k"``."""
    with running_companies_house() as standin:
        yield standin
