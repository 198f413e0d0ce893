"""The bounded website fetcher and page analysis against the fake sites on 127.0.0.1."""

from __future__ import annotations

import functools
import ipaddress
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.fingerprints import extract_features
from agents.website import (
    SOCIAL_WEIGHTS,
    WebsiteError,
    analyse_page,
    fetch_page,
    is_fetchable_url,
    non_public_reason,
    social_links,
    social_score,
    website_client,
)
from tests.standins.server import QuietHandler, QuietServer, serve_in_background
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
    async with website_client() as client:
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
    async with website_client() as http:
        for url in ("http://127.0.0.1:9/", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.1/", "http://[::1]/", "http://localhost/"):
            with pytest.raises(WebsiteError) as info:
                await fetch_page(http, url)
            assert info.value.kind == "blocked_address", url


# Addresses: resolved once, every one checked, the checked one connected to -----------


class Resolver:
    """A scripted DNS: ``answers[host]`` is the list of answers, one per lookup (the
    last repeats), so a test can make a second lookup answer differently (rebinding)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answers = self.answers[host]
        return answers[min(len(self.calls_for(host)) - 1, len(answers) - 1)]

    def calls_for(self, host: str) -> list[tuple[str, int]]:
        return [call for call in self.calls if call[0] == host]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # NAT64 (RFC 6052 well-known prefix, RFC 8215 local use) and 6to4 reach the IPv4
        # address they carry: refused when that one is not public.
        ("64:ff9b::a00:1", "NAT64 address of private 10.0.0.1"),
        ("64:ff9b::7f00:1", "NAT64 address of loopback 127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64 address of link-local 169.254.169.254"),
        ("64:ff9b:1:a00:0:100::", "local-use NAT64 address of private 10.0.0.1"),
        ("2002:a00:1::", "6to4 address of private 10.0.0.1"),
        ("2002:c0a8:101::1", "6to4 address of private 192.168.1.1"),
        # Forms that never name a web server: refused whatever they carry.
        ("::ffff:10.0.0.1", "IPv4-mapped address carrying 10.0.0.1"),
        ("::ffff:8.8.8.8", "IPv4-mapped address carrying 8.8.8.8"),
        ("::10.0.0.1", "IPv4-compatible address carrying 10.0.0.1"),
        ("::ffff:0:a00:1", "IPv4-translated address carrying 10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2",
         "Teredo address carrying server 65.54.227.120, client 192.0.2.45"),
        # The plain ranges, including those ipaddress counts as global.
        ("127.0.0.1", "loopback"), ("::1", "loopback"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"), ("ff0e::1", "multicast"),
        ("10.1.2.3", "private"), ("fd00::1", "private"),
        ("fec0::1", "site-local"),
        ("100.64.0.1", "not globally routable"),
    ],
)
async def test_non_public_and_embedded_private_addresses_are_refused(
    address: str, reason: str,
) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) == reason
    resolve = Resolver({"site.test": [[address]]})
    host = f"[{address}]" if ":" in address else address
    async with website_client() as http:
        for url in (f"http://{host}/", "https://site.test/"):
            with pytest.raises(WebsiteError) as caught:
                await fetch_page(http, url, resolve=resolve)
            assert caught.value.kind == "blocked_address"
            assert f"{ipaddress.ip_address(address)}: {reason}" in str(caught.value), url


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "64:ff9b:1:808:8:800::",
                                     "2002:808:808::1", "93.184.216.34", "2606:4700::1111"])
def test_public_addresses_and_their_translations_are_allowed(address: str) -> None:
    assert non_public_reason(ipaddress.ip_address(address)) is None


async def test_every_resolved_address_is_checked() -> None:
    resolve = Resolver({"mixed.test": [["93.184.216.34", "10.0.0.1", "64:ff9b::7f00:1"]]})
    async with website_client() as http:
        with pytest.raises(WebsiteError) as caught:
            await fetch_page(http, "http://mixed.test/", resolve=resolve)
    assert caught.value.kind == "blocked_address"
    assert str(caught.value) == (
        "http://mixed.test/: 'mixed.test' resolves to a non-public address "
        "(10.0.0.1: private; 64:ff9b::7f00:1: NAT64 address of loopback 127.0.0.1)")
    assert resolve.calls == [("mixed.test", 80)]


class _Recorded(list[tuple[str, str | None]]):
    """(path, Host header) of each request a stand-in received."""


class _HostsHandler(QuietHandler):
    """``/a`` redirects to ``other.test`` by absolute URL, ``/b`` to ``/c`` (relative),
    ``/c`` is a page."""

    def do_GET(self) -> None:
        state: dict[str, Any] = self.server.state
        state["requests"].append((self.path, self.headers.get("Host")))
        port = self.server.server_address[1]
        location = {"/a": f"http://other.test:{port}/b", "/b": "/c"}.get(self.path)
        body = b"<html><body>hello</body></html>"
        self.send_response(302 if location else 200)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", "0" if location else str(len(body)))
        self.end_headers()
        if not location:
            self.wfile.write(body)


async def test_each_hop_resolves_once_and_connects_to_that_address() -> None:
    # One answer per hop is the stand-in; any lookup past that answers an address where
    # nothing listens. The hosts do not exist in real DNS either: only the addresses
    # resolved (once per hop) and checked can have been connected to.
    state: dict[str, Any] = {"requests": _Recorded()}
    with serve_in_background(_HostsHandler, state) as url:
        port = int(url.rsplit(":", 1)[1])
        resolve = Resolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]],
                            "other.test": [["127.0.0.1"], ["127.0.0.1"], ["127.0.0.2"]]})
        async with website_client() as http:
            page = await fetch_page(http, f"http://rebind.test:{port}/a", resolve=resolve,
                                    allow_private_addresses=True)
    assert page.status_code == 200 and page.redirects == 2
    assert page.final_url == f"http://other.test:{port}/c"
    assert resolve.calls == [("rebind.test", port), ("other.test", port), ("other.test", port)]
    # Every request carried the name it was for, not the address it went to.
    assert state["requests"] == [("/a", f"rebind.test:{port}"), ("/b", f"other.test:{port}"),
                                 ("/c", f"other.test:{port}")]


async def test_the_checked_public_address_is_the_one_requested() -> None:
    # No public server is reachable from the tests, so the transport records the request
    # instead: it goes to the address that passed the check, though a second lookup would
    # now say 127.0.0.1, and names the host in its Host header and TLS server name.
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"Content-Type": "text/html"}, html="<p>hi</p>")

    resolve = Resolver({"www.example.test": [["93.184.216.34"], ["127.0.0.1"]]})
    async with website_client(transport=httpx.MockTransport(answer)) as http:
        page = await fetch_page(http, "https://www.example.test/about", resolve=resolve)
    assert page.final_url == "https://www.example.test/about"
    [request] = seen
    assert str(request.url) == "https://93.184.216.34/about"
    assert request.headers["Host"] == "www.example.test"
    assert request.extensions["sni_hostname"] == "www.example.test"
    assert resolve.calls == [("www.example.test", 443)]


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS site on 127.0.0.1 whose certificate names only ``site.test``: (port,
    the certificate to trust, the server names clients sent)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=site.test",
         "-addext", "subjectAltName=DNS:site.test"],
        check=True, capture_output=True,
    )
    names: list[str] = []

    def record_server_name(_sock: Any, name: str | None, _context: ssl.SSLContext) -> None:
        names.append(str(name))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = record_server_name
    state: dict[str, Any] = {"requests": _Recorded()}
    server = QuietServer(("127.0.0.1", 0), _HostsHandler)
    server.state = state
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert, names
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_https_to_the_checked_address_uses_the_host_name_for_tls(
    tls_site: tuple[int, Path, list[str]],
) -> None:
    port, cert, names = tls_site
    trust = ssl.create_default_context(cafile=str(cert))
    resolve = Resolver({"site.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with website_client(verify=trust) as http:
        page = await fetch_page(http, f"https://site.test:{port}/c", resolve=resolve,
                                allow_private_addresses=True)
        assert page.status_code == 200 and "hello" in page.html
        # The certificate was checked against the name, not the address connected to.
        assert names[-1:] == ["site.test"]
        with pytest.raises(WebsiteError) as caught:
            await fetch_page(http, f"https://127.0.0.1:{port}/c", allow_private_addresses=True)
    assert caught.value.kind == "transport" and "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


class _ProxyHandler(QuietHandler):
    """A forward proxy that records what it was asked for and forwards nothing."""

    def do_GET(self) -> None:
        self.server.state.append(self.path)
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()


async def test_proxy_variables_do_not_affect_fetches(
    sites: WebsitesStandIn, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxied: list[str] = []
    with serve_in_background(_ProxyHandler, proxied) as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy)
            monkeypatch.setenv(name.lower(), proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        # The variables are live: a client that reads them goes to the proxy ...
        async with httpx.AsyncClient() as trusting:
            assert (await trusting.get(sites.site_url("plain"))).status_code == 502
            assert proxied == [sites.site_url("plain")]
            # ... and fetch_page refuses such a client outright.
            with pytest.raises(ValueError, match="ignores proxy variables"):
                await fetch_local(trusting, sites.site_url("plain"))
        async with website_client() as http:
            page = await fetch_local(http, sites.site_url("plain"))
    assert page.status_code == 200 and "We make things" in page.html
    assert proxied == [sites.site_url("plain")]  # the fetch did not go through it
