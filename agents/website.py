"""A bounded look at a company's website: one page, fetched defensively, then read for
technologies, social-media presence and hiring.

Bounds, because the URLs come from public registers and scraped lists and anything may
sit behind them:

* only ``http`` and ``https`` URLs, checked again on every redirect hop;
* every hop's host is resolved once, *every* address it resolves to is checked (no
  loopback, private, link-local, multicast, reserved or other non-public address, nor
  an IPv6 form that carries one: NAT64, 6to4, IPv4-mapped, -compatible or -translated,
  Teredo), and the connection goes to one of those checked addresses, with the original
  ``Host`` header and TLS server name (SNI and certificate check), so a DNS answer that
  changes after the check (DNS rebinding) is never used;
* the client ignores ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY``: a proxy would make
  its own lookup, after our check (use :func:`website_client`);
* redirects are followed by hand, at most ``max_redirects`` hops (a loop ends there);
* one overall deadline for the whole fetch (``timeout``), so a server that trickles
  bytes cannot keep a worker busy for longer than that;
* the body is streamed and reading stops at ``max_bytes`` (1 MiB by default); the page
  is analysed as truncated rather than rejected;
* only ``text/html`` (or XHTML) responses are analysed.

Social presence score (0..1): the sum of the weights of the distinct platforms the page
links to. The weights reflect how much each profile says about a B2B company's public
presence — LinkedIn is where B2B buyers look first, the broad consumer networks next,
video and developer communities after:

============  ======
LinkedIn      0.25
X / Twitter   0.15
Facebook      0.15
Instagram     0.15
YouTube       0.10
GitHub        0.10
TikTok        0.10
============  ======

Share buttons (``/sharer``, ``/intent/tweet``, ``/shareArticle``) are not profiles and
do not count.

Hiring: a link whose path or text names careers, jobs, vacancies or "join us", or any
link to a hosted applicant-tracking system (Greenhouse, Lever, Workable, ...), is a
hiring signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.cookiejar
import ipaddress
import re
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Final, Literal
from urllib.parse import urljoin, urlsplit

import httpx

from agents.fingerprints import Detection, PageFeatures, detect, extract_features
from runner.api import (
    AddressProblem,
    Resolver,
    checked_addresses,
    non_public_reason,
    resolve_host,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SOCIAL_WEIGHTS",
    "FetchedPage",
    "PageAnalysis",
    "Resolver",
    "WebsiteError",
    "analyse_page",
    "fetch_page",
    "hiring_links",
    "is_fetchable_url",
    "non_public_reason",
    "resolve_host",
    "social_links",
    "social_score",
    "website_client",
    "website_url",
]

DEFAULT_MAX_BYTES: Final = 1024 * 1024
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_HTML_TYPES: Final = ("text/html", "application/xhtml+xml")

ObserveCall = Callable[[str, str], None]

WebsiteErrorKind = Literal[
    "invalid_url", "timeout", "too_many_redirects", "not_html", "http_error", "transport",
    "blocked_address",
]


class WebsiteError(Exception):
    """The page could not be fetched or is not a web page; ``kind`` says which."""

    def __init__(self, kind: WebsiteErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True, slots=True)
class FetchedPage:
    requested_url: str
    final_url: str
    status_code: int
    #: The final response's headers as pairs (a name may repeat), names lower-cased.
    headers: tuple[tuple[str, str], ...]
    #: Cookies set along the redirect chain, name -> value.
    cookies: dict[str, str]
    html: str
    #: True when the body was longer than the cap and reading stopped there.
    truncated: bool
    redirects: int

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


def website_client(
    *,
    max_connections: int = 10,
    user_agent: str | None = None,
    verify: ssl.SSLContext | bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The client :func:`fetch_page` needs: it ignores the proxy variables
    (``trust_env=False``: a proxy would resolve the host again, after our check), keeps
    no idle connection (the pool is keyed by the address connected to, and two sites on
    one address must not share a connection made with the other's TLS name) and
    no cookies (one site's cookies are never sent to another on the same address)."""
    return httpx.AsyncClient(
        headers={"User-Agent": user_agent} if user_agent else None,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
        cookies=http.cookiejar.CookieJar(
            policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
        trust_env=False,
        verify=verify,
        transport=transport,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Hop:
    """One request's target: the URL as written and the checked addresses to try."""

    url: httpx.URL
    #: The name to send as TLS server name; None when the URL names an address.
    server_name: str | None
    addresses: tuple[str, ...]


async def _resolve_hop(url: str, resolve: Resolver, allow_private_addresses: bool) -> _Hop:
    """Resolve the URL's host once and check every address (unless private ones are
    allowed): the request then connects to one of exactly these."""
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: a bad IDNA label
        raise WebsiteError("invalid_url", f"not a valid URL: {url!r} ({exc})") from None
    server_name: str | None = None
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        server_name = target.raw_host.decode("ascii")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        addresses = await checked_addresses(
            server_name or target.host, port, allow_private=allow_private_addresses,
            resolve=resolve, shown=target.host)
    except AddressProblem as exc:
        raise WebsiteError("blocked_address" if exc.kind == "non_public" else "transport",
                           f"{url}: {exc}") from None
    return _Hop(target, server_name, tuple(addresses))


@contextlib.asynccontextmanager
async def _open(
    http: httpx.AsyncClient, hop: _Hop, deadline: float
) -> AsyncIterator[httpx.Response]:
    """GET the hop from its first checked address that accepts a connection."""
    headers = {
        "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
        "Host": hop.url.netloc.decode("ascii"),
    }
    extensions = {"sni_hostname": hop.server_name} \
        if hop.server_name is not None and hop.url.scheme == "https" else {}
    refused: httpx.ConnectError | None = None
    for address in hop.addresses:
        request = http.build_request(
            "GET", hop.url.copy_with(host=address), headers=headers, timeout=deadline,
            extensions=extensions,
        )
        try:
            response = await http.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            refused = exc
            continue
        try:
            yield response
        finally:
            await response.aclose()
        return
    assert refused is not None  # there is at least one address
    raise refused


def is_fetchable_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def website_url(website: str | None) -> str | None:
    """A company's ``website`` column as an http(s) URL to fetch (a bare host name gets
    ``https://``), or None when it is empty or not a web address."""
    if not website or not website.strip():
        return None
    candidate = website.strip()
    if "://" not in candidate:
        candidate = "https://" + candidate
    return candidate if is_fetchable_url(candidate) else None


async def fetch_page(
    http: httpx.AsyncClient,
    url: str,
    *,
    deadline: float = 10.0,
    max_redirects: int = 5,
    max_bytes: int = DEFAULT_MAX_BYTES,
    observe: ObserveCall | None = None,
    allow_private_addresses: bool = False,
    resolve: Resolver = resolve_host,
) -> FetchedPage:
    """Fetch one page within the bounds above, or raise :class:`WebsiteError`.

    ``http`` must come from :func:`website_client` (a client that reads the proxy
    variables is refused with ``ValueError``).

    Website addresses come from imported data, so they are untrusted: unless
    ``allow_private_addresses`` (tests, whose sites are on 127.0.0.1), a host with any
    address for which :func:`non_public_reason` gives a reason is refused
    (``blocked_address``), on every redirect hop. Either way each hop's host is
    resolved once, by ``resolve``, and only those addresses are connected to.

    ``deadline`` bounds the whole fetch, redirects and body included, in seconds.
    ``observe(service, outcome)`` is called once per HTTP request made (each redirect
    hop is a request), with ``service="website"``."""
    if http.trust_env:
        raise ValueError("fetch_page needs a client that ignores proxy variables "
                         "(agents.website.website_client)")
    if not is_fetchable_url(url):
        raise WebsiteError("invalid_url", f"not an http(s) URL: {url!r}")
    try:
        async with asyncio.timeout(deadline):
            return await _follow(
                http, url, deadline, max_redirects, max_bytes, observe,
                allow_private_addresses, resolve,
            )
    except TimeoutError:
        _observe(observe, "timeout")
        raise WebsiteError("timeout", f"{url}: no complete answer within {deadline:g} s") from None


async def _follow(
    http: httpx.AsyncClient,
    url: str,
    deadline: float,
    max_redirects: int,
    max_bytes: int,
    observe: ObserveCall | None,
    allow_private_addresses: bool,
    resolve: Resolver,
) -> FetchedPage:
    cookies: dict[str, str] = {}
    current = url
    for hop in range(max_redirects + 1):
        target_hop = await _resolve_hop(current, resolve, allow_private_addresses)
        try:
            async with _open(http, target_hop, deadline) as response:
                cookies.update(_set_cookies(response))
                if response.status_code in _REDIRECT_STATUSES and "location" in response.headers:
                    _observe(observe, "ok")
                    # Relative to the URL as written: response.url names the address.
                    target = urljoin(current, response.headers["location"])
                    if not is_fetchable_url(target):
                        raise WebsiteError(
                            "invalid_url", f"{current} redirects to a non-http(s) URL {target!r}"
                        )
                    current = target
                    continue
                if response.status_code >= 400:
                    _observe(observe, "not_found" if response.status_code == 404 else (
                        "server_error" if response.status_code >= 500 else "client_error"))
                    raise WebsiteError("http_error", f"{current}: HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "").lower()
                if not content_type.startswith(_HTML_TYPES):
                    _observe(observe, "ok")
                    raise WebsiteError(
                        "not_html", f"{current}: content-type {content_type or 'missing'!r}"
                    )
                body, truncated = await _read_capped(response, max_bytes)
                _observe(observe, "ok")
                return FetchedPage(
                    requested_url=url,
                    final_url=current,
                    status_code=response.status_code,
                    headers=tuple((k.lower(), v) for k, v in response.headers.multi_items()),
                    cookies=cookies,
                    html=body.decode(response.encoding or "utf-8", errors="replace"),
                    truncated=truncated,
                    redirects=hop,
                )
        except httpx.TimeoutException:
            raise TimeoutError from None
        except httpx.HTTPError as exc:
            _observe(observe, "error")
            raise WebsiteError("transport", f"{current}: {type(exc).__name__}: {exc}") from None
    raise WebsiteError("too_many_redirects", f"{url}: more than {max_redirects} redirects")


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > max_bytes:
            chunks.append(chunk[: max_bytes - size])
            # Leaving the stream context closes the connection without reading the rest.
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    found: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        name, sep, rest = header.partition("=")
        if sep and name.strip():
            found[name.strip()] = rest.split(";", 1)[0].strip()
    return found


def _observe(observe: ObserveCall | None, outcome: str) -> None:
    if observe is not None:
        observe("website", outcome)


# Reading the page ----------------------------------------------------------------------

SOCIAL_WEIGHTS: Final[dict[str, float]] = {
    "linkedin": 0.25,
    "x": 0.15,
    "facebook": 0.15,
    "instagram": 0.15,
    "youtube": 0.10,
    "github": 0.10,
    "tiktok": 0.10,
}

_SOCIAL_HOSTS: Final[dict[str, str]] = {
    "linkedin.com": "linkedin",
    "twitter.com": "x",
    "x.com": "x",
    "facebook.com": "facebook",
    "fb.com": "facebook",
    "instagram.com": "instagram",
    "youtube.com": "youtube",
    "youtu.be": "youtube",
    "github.com": "github",
    "tiktok.com": "tiktok",
}
_SHARE_PATH: Final = re.compile(r"/(?:sharer|share|intent/tweet|shareArticle|dialog/share)",
                                re.IGNORECASE)
_HIRING_WORDS: Final = re.compile(
    r"\b(?:careers?|jobs?|vacanc(?:y|ies)|join[-_ ]?(?:us|our[-_ ]team)|we(?:'re| are)[-_ ]hiring"
    r"|work[-_ ]with[-_ ]us|open[-_ ]positions|recruitment)\b",
    re.IGNORECASE,
)
_ATS_HOSTS: Final = (
    "greenhouse.io", "lever.co", "workable.com", "teamtailor.com", "ashbyhq.com",
    "recruitee.com", "personio.de", "personio.com", "bamboohr.com", "smartrecruiters.com",
    "breezy.hr", "pinpointhq.com", "jobs.workday.com", "myworkdayjobs.com",
)


def _host_matches(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def social_links(features: PageFeatures, base_url: str = "") -> dict[str, str]:
    """Platform -> the first profile URL the page links to."""
    found: dict[str, str] = {}
    for href, _text in features.links:
        absolute = urljoin(base_url, href) if base_url else href
        try:
            parts = urlsplit(absolute)
        except ValueError:
            continue
        host = (parts.hostname or "").lower()
        if not host or _SHARE_PATH.search(parts.path):
            continue
        for domain, platform in _SOCIAL_HOSTS.items():
            # A bare domain link (https://twitter.com/) is not a profile.
            if _host_matches(host, domain) and parts.path.strip("/"):
                found.setdefault(platform, absolute)
    return found


def social_score(platforms: set[str] | dict[str, str]) -> float:
    return round(min(1.0, sum(SOCIAL_WEIGHTS.get(p, 0.0) for p in set(platforms))), 4)


def hiring_links(features: PageFeatures, base_url: str = "") -> list[str]:
    """Links that point at a careers page or a hosted job board, deduplicated."""
    found: list[str] = []
    for href, text in features.links:
        absolute = urljoin(base_url, href) if base_url else href
        try:
            parts = urlsplit(absolute)
        except ValueError:
            continue
        if parts.scheme not in ("http", "https"):
            continue
        host = (parts.hostname or "").lower()
        on_ats = any(_host_matches(host, ats) for ats in _ATS_HOSTS)
        named = bool(_HIRING_WORDS.search(parts.path.replace("/", " ")) or
                     _HIRING_WORDS.search(text))
        if (on_ats or named) and absolute not in found:
            found.append(absolute)
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class PageAnalysis:
    detections: tuple[Detection, ...]
    social_links: dict[str, str]
    social_score: float
    hiring_links: tuple[str, ...]

    @property
    def tech_stack(self) -> list[str]:
        return [d.name for d in self.detections]


def analyse_page(page: FetchedPage) -> PageAnalysis:
    features = extract_features(page.html)
    social = social_links(features, page.final_url)
    return PageAnalysis(
        detections=tuple(detect(page.headers, page.html, page.cookies, features=features)),
        social_links=social,
        social_score=social_score(social),
        hiring_links=tuple(hiring_links(features, page.final_url)),
    )
