"""The Companies House client against the stand-in API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date

import httpx
import pytest

from agents.companies_house import (
    CompaniesHouseClient,
    CompaniesHouseRejected,
    CompaniesHouseUnavailable,
    CompanyProfile,
    NotFound,
    OfficerList,
    RetryPolicy,
    normalise_company_number,
)
from runner.api import FailPermanently
from tests.standins.companies_house import (
    CompaniesHouseStandIn,
    basic_auth,
    officer,
    running_companies_house,
)

FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.05,
                   max_rate_limit_wait=5.0, request_timeout=5.0)


@pytest.fixture
def ch() -> Iterator[CompaniesHouseStandIn]:
    with running_companies_house(api_key="k") as standin:
        standin.add_company(
            "01234567", name="ACME WIDGETS LTD", sic_codes=["62012"], locality="Leeds",
            date_of_creation="2019-05-01",
            officers=[officer("SMITH, Jane", appointed_on="2019-05-01"),
                      officer("JONES, Bob", appointed_on="2024-11-01"),
                      officer("OLD, Al", appointed_on="2019-05-01", resigned_on="2024-01-15")],
        )
        standin.add_company("SC123456", name="THISTLE LTD", sic_codes=["47910"],
                            locality="Glasgow", date_of_creation="2010-01-01")
        yield standin


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class Calls(list[tuple[str, str]]):
    def __call__(self, service: str, outcome: str) -> None:
        self.append((service, outcome))

    @property
    def outcomes(self) -> list[str]:
        return [outcome for _service, outcome in self]


def client(http: httpx.AsyncClient, ch: CompaniesHouseStandIn, calls: Calls, *,
           key: str = "k", policy: RetryPolicy = FAST) -> CompaniesHouseClient:
    return CompaniesHouseClient(http, api_key=key, base_url=ch.url, observe=calls, policy=policy)


async def test_profile_is_fetched_with_the_key_as_basic_auth_user(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    profile = await client(http, ch, calls).get_profile("1234567")  # padded to 8 digits
    assert isinstance(profile, CompanyProfile)
    assert profile.company_number == "01234567"
    assert profile.company_name == "ACME WIDGETS LTD"
    assert profile.date_of_creation == date(2019, 5, 1)
    assert profile.accounts is not None and profile.accounts.last_accounts is not None
    assert profile.accounts.last_accounts.type == "small"
    # Members the model does not declare are kept, not dropped.
    assert profile.model_dump(mode="json")["undocumented_member"] == {"kept": True}
    [request] = ch.requests
    assert request.path == "/company/01234567"
    assert request.authorization == basic_auth("k")
    assert calls == [("companies_house", "ok")]


async def test_unknown_company_is_a_not_found_result(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    result = await client(http, ch, calls).get_profile("99999999")
    assert isinstance(result, NotFound)
    assert result.reason == "company-profile-not-found"
    assert calls.outcomes == ["not_found"]


async def test_a_number_that_cannot_exist_is_not_sent() -> None:
    assert normalise_company_number(" sc 123456 ") == "SC123456"
    assert normalise_company_number("123") == "00000123"
    assert normalise_company_number("123456789") is None
    assert normalise_company_number("AB-12345") is None
    async with httpx.AsyncClient() as http:
        calls = Calls()
        ch_client = CompaniesHouseClient(http, api_key="k", base_url="http://127.0.0.1:9",
                                         observe=calls, policy=FAST)
        result = await ch_client.get_profile("123456789")
    assert isinstance(result, NotFound) and "invalid" in result.reason
    assert calls == []


async def test_officers_list_is_parsed_newest_first(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    officers = await client(http, ch, Calls()).get_officers("01234567")
    assert isinstance(officers, OfficerList)
    assert (officers.active_count, officers.resigned_count) == (2, 1)
    assert [o.name for o in officers.items] == ["JONES, Bob", "SMITH, Jane", "OLD, Al"]
    assert officers.items[2].resigned_on == date(2024, 1, 15)
    assert ch.requests[0].query["items_per_page"] == ["100"]


async def test_advanced_search_sends_the_documented_parameters(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    result = await client(http, ch, Calls()).advanced_search(
        sic_codes=["62012", "62020"], location="Leeds", company_status=["active"],
        incorporated_from=date(2015, 1, 1), incorporated_to=date(2024, 12, 31),
        size=50, start_index=0,
    )
    assert result.hits == 1
    assert [c.company_number for c in result.items] == ["01234567"]
    query = ch.requests[0].query
    assert query["sic_codes"] == ["62012,62020"]
    assert query["company_status"] == ["active"]
    assert query["location"] == ["Leeds"]
    assert query["incorporated_from"] == ["2015-01-01"]
    assert query["incorporated_to"] == ["2024-12-31"]
    assert (query["size"], query["start_index"]) == (["50"], ["0"])
    with pytest.raises(ValueError, match="size"):
        await client(http, ch, Calls()).advanced_search(size=5001)


async def test_429_waits_for_the_reset_then_succeeds(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    ch.rate_limit_next(times=1, reset_in=0.5)
    profile = await client(http, ch, calls).get_profile("01234567")
    assert isinstance(profile, CompanyProfile)
    assert calls.outcomes == ["rate_limited", "ok"]
    refused, accepted = ch.requests
    assert refused.status == 429 and accepted.status == 200
    # The retry went out only once the advertised window had reset.
    assert accepted.at >= float(refused.rate_headers["X-Ratelimit-Reset"])


async def test_429_for_ever_gives_up_after_the_bounded_attempts(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    ch.rate_limit_next(times=100, reset_in=0.2)
    policy = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05,
                         max_rate_limit_wait=0.3)
    with pytest.raises(CompaniesHouseUnavailable) as caught:
        await client(http, ch, calls, policy=policy).get_profile("01234567")
    assert caught.value.last_outcome == "rate_limited"
    assert calls.outcomes == ["rate_limited", "rate_limited"]


async def test_5xx_is_retried_then_succeeds(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    ch.fail("/company/01234567", status=502, times=2)
    profile = await client(http, ch, calls).get_profile("01234567")
    assert isinstance(profile, CompanyProfile)
    assert calls.outcomes == ["server_error", "server_error", "ok"]


async def test_5xx_for_ever_is_a_bounded_failure(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    ch.fail("/company/01234567", status=500, times=None)
    started = time.monotonic()
    with pytest.raises(CompaniesHouseUnavailable) as caught:
        await client(http, ch, calls).get_profile("01234567")
    assert time.monotonic() - started < 2
    assert caught.value.attempts == FAST.max_attempts
    assert caught.value.last_outcome == "server_error"
    assert "Internal server error" in str(caught.value)
    assert len(ch.requests) == FAST.max_attempts
    assert calls.outcomes == ["server_error"] * FAST.max_attempts


async def test_other_4xx_fails_permanently_with_the_api_message(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    calls = Calls()
    with pytest.raises(CompaniesHouseRejected) as caught:
        await client(http, ch, calls, key="wrong").get_profile("01234567")
    assert isinstance(caught.value, FailPermanently)
    assert caught.value.status_code == 401
    assert caught.value.api_message == "Invalid Authorization"
    assert "wrong" not in str(caught.value)  # the key never appears in messages
    assert calls.outcomes == ["client_error"]
    ch.fail("/advanced-search", status=400, times=1)
    with pytest.raises(CompaniesHouseRejected, match="standin-400"):
        await client(http, ch, Calls()).advanced_search(sic_codes=["62012"])


async def test_unreachable_server_is_counted_as_error_and_bounded(
    http: httpx.AsyncClient,
) -> None:
    calls = Calls()
    # Port 9 (discard) on loopback: nothing listens, the connection is refused.
    ch_client = CompaniesHouseClient(http, api_key="k", base_url="http://127.0.0.1:9",
                                     observe=calls, policy=FAST)
    with pytest.raises(CompaniesHouseUnavailable) as caught:
        await ch_client.get_profile("01234567")
    assert caught.value.last_outcome == "error"
    assert calls.outcomes == ["error"] * FAST.max_attempts


async def test_requests_are_paced_when_the_remaining_budget_is_low(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    # Three requests left in a window that resets within a second: four calls must be
    # spread out so that none is refused, the last one after the reset.
    ch.set_window(remain=3, reset_in=0.5)
    calls = Calls()
    ch_client = client(http, ch, calls)
    for _ in range(4):
        assert isinstance(await ch_client.get_profile("01234567"), CompanyProfile)
    assert calls.outcomes == ["ok"] * 4
    assert ch.count(429) == 0
    times = [r.at for r in ch.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[1] > 0.05, gaps  # paced, not back to back
    assert times[-1] - times[0] >= 0.4


async def test_concurrent_callers_share_one_budget(
    http: httpx.AsyncClient, ch: CompaniesHouseStandIn,
) -> None:
    ch.set_window(remain=2, reset_in=0.5)
    calls = Calls()
    ch_client = client(http, ch, calls)
    # Learn the window first, then fire five at once: only two fit before the reset.
    await ch_client.get_profile("01234567")
    results = await asyncio.gather(*(ch_client.get_profile("01234567") for _ in range(4)))
    assert all(isinstance(r, CompanyProfile) for r in results)
    assert ch.count(429) == 0
