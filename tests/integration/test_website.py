"""The bounded website fetcher and page analysis against the fake sites on 127.0.0.1."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from agents.fingerprints import extract_features
from agents.website import (
    SOCIAL_WEIGHTS,
    WebsiteError,
    analyse_page,
    fetch_page,
    is_fetchable_url,
    social_links,
    social_score,
)
from tests.standins.websites import WebsitesStandIn, running_websites

# The stand-in sites listen on 127.0.0.1, which fetch_page refuses unless told otherwise
# (see test_private_addresses_are_refused_by_default).
fetch_local = functools.partial(fetch_page, allow_private_addresses=True)


@pytest.fixture(scope="module")
def sites() -> Iterator[WebsitesStandIn]:
    with running_websites() as standin:
        yield standin


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class Calls(list[tuple[str, str]]):
    def __call__(self, service: str, outcome: str) -> None:
        self.append((service, outcome))


async def test_fetch_returns_headers_cookies_and_html(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    calls = Calls()
    page = await fetch_local(http, sites.site_url("shop"), observe=calls)
    assert page.status_code == 200
    assert page.final_url == sites.site_url("shop")
    assert page.header("X-Shopify-Stage") == "production"
    assert page.cookies == {"_shopify_y": "abc", "_shopify_s": "def"}
    assert "cdn.shopify.com" in page.html
    assert not page.truncated and page.redirects == 0
    assert calls == [("website", "ok")]


async def test_size_cap_stops_reading_and_hides_evidence_past_it(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    page = await fetch_local(http, sites.site_url("big"), max_bytes=64 * 1024)
    assert page.truncated
    assert len(page.html.encode()) == 64 * 1024
    # The Stripe script sits at the very end of the 3 MiB page.
    assert "Stripe" not in analyse_page(page).tech_stack
    default = await fetch_local(http, sites.site_url("big"))
    assert default.truncated and len(default.html.encode()) == 1024 * 1024


async def test_slow_server_hits_the_deadline(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    calls = Calls()
    started = time.monotonic()
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, sites.site_url("slow"), deadline=0.5, observe=calls)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2
    assert calls == [("website", "timeout")]


async def test_trickling_body_cannot_outlast_the_deadline(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    # Every read returns within httpx's per-read timeout; only the overall deadline
    # stops this one.
    started = time.monotonic()
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, sites.site_url("trickle"), deadline=0.6)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2


async def test_redirects_are_followed_within_the_limit(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    calls = Calls()
    page = await fetch_local(http, f"{sites.url}/hop/1", observe=calls)
    assert page.final_url == sites.site_url("wordpress")
    assert page.redirects == 2
    assert calls == [("website", "ok")] * 3
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, f"{sites.url}/hop/1", max_redirects=1)
    assert caught.value.kind == "too_many_redirects"


async def test_redirect_loop_ends_at_the_limit(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    before = len(sites.requests)
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, f"{sites.url}/loop/a", max_redirects=4)
    assert caught.value.kind == "too_many_redirects"
    assert len(sites.requests) - before == 5  # the first request and four redirects


async def test_only_http_and_html_are_accepted(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
) -> None:
    for url in ("ftp://files.example/", "file:///etc/passwd", "javascript:alert(1)",
                "not a url", "http://"):
        assert not is_fetchable_url(url)
        with pytest.raises(WebsiteError) as caught:
            await fetch_local(http, url)
        assert caught.value.kind == "invalid_url"
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, f"{sites.url}/to-ftp/")
    assert caught.value.kind == "invalid_url"
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, sites.site_url("json"))
    assert caught.value.kind == "not_html"
    calls = Calls()
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, sites.site_url("missing"), observe=calls)
    assert caught.value.kind == "http_error"
    assert calls == [("website", "not_found")]


async def test_unreachable_host_is_a_transport_error(http: httpx.AsyncClient) -> None:
    calls = Calls()
    with pytest.raises(WebsiteError) as caught:
        await fetch_local(http, "http://127.0.0.1:9/", observe=calls)
    assert caught.value.kind == "transport"
    assert calls == [("website", "error")]


@pytest.mark.parametrize(
    ("site", "stack", "platforms", "hiring"),
    [
        ("wordpress", {"WordPress", "Cloudflare", "Google Analytics", "jQuery", "Google Fonts"},
         {"linkedin", "x", "facebook"}, True),
        ("shop", {"Shopify", "Klaviyo", "Google Tag Manager"},
         {"instagram", "tiktok", "facebook", "youtube"}, False),
        ("saas", {"Next.js", "React", "Vercel", "HubSpot", "Intercom", "Stripe", "Segment",
                  "Google Tag Manager"},
         {"linkedin", "x", "github", "youtube"}, True),
        ("plain", set(), set(), False),
    ],
)
async def test_page_analysis_of_the_fake_sites(
    http: httpx.AsyncClient, sites: WebsitesStandIn,
    site: str, stack: set[str], platforms: set[str], hiring: bool,
) -> None:
    analysis = analyse_page(await fetch_local(http, sites.site_url(site)))
    assert set(analysis.tech_stack) == stack
    assert set(analysis.social_links) == platforms
    assert analysis.social_score == pytest.approx(sum(SOCIAL_WEIGHTS[p] for p in platforms))
    assert bool(analysis.hiring_links) is hiring


def test_social_weights_sum_to_one_and_score_is_bounded() -> None:
    assert sum(SOCIAL_WEIGHTS.values()) == pytest.approx(1.0)
    assert social_score(set(SOCIAL_WEIGHTS)) == 1.0
    assert social_score({"linkedin": "https://www.linkedin.com/company/a"}) == 0.25
    assert social_score(set()) == 0


def test_share_buttons_and_bare_domains_are_not_profiles() -> None:
    features = extract_features(
        '<a href="https://www.facebook.com/sharer/sharer.php?u=x">f</a>'
        '<a href="https://twitter.com/intent/tweet?text=x">t</a>'
        '<a href="https://www.linkedin.com/">in</a>'
        '<a href="https://uk.linkedin.com/company/acme">in</a>'
    )
    assert social_links(features) == {"linkedin": "https://uk.linkedin.com/company/acme"}


async def test_private_addresses_are_refused_by_default() -> None:
    async with httpx.AsyncClient() as http:
        for url in ("http://127.0.0.1:9/", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.1/", "http://[::1]/", "http://localhost/"):
            with pytest.raises(WebsiteError) as info:
                await fetch_page(http, url)
            assert info.value.kind == "blocked_address", url
