"""The demo's company websites: a small HTTP server on 127.0.0.1 that the demo starts for
the length of its run, one site per generated company, so that the enrichment agent and
the scout have real pages to read with no network at all.

A company's site is ``http://127.0.0.1:PORT/demo-sites/<company number>/``; its careers
page, when it has one, ``.../careers/``. What a site holds is drawn from the company
number and the demo's seed (so the same company always has the same site), with
software and finance companies more often running a full commercial stack:

* *rich* — analytics plus two to four of Stripe, HubSpot, Intercom, Segment and Hotjar
  (fingerprinted by ``agents/fingerprints.py``), LinkedIn and other profiles, and mostly
  a careers page listing one to five openings as schema.org ``JobPosting`` data, posted
  in the last six weeks;
* *basic* — a WordPress site with analytics, sometimes a LinkedIn profile and a careers
  page with a role or two as a plain list;
* *parked* — a holding page: text, nothing to detect;
* *missing* — the site answers 404 (the enrichment agent counts a website error).

Only the demo points companies at it (``agents/demo.py``): their ``website`` column holds
this server's address, which changes from run to run, so the demo rewrites it each time.
The demo's agents are configured with ``allow_private_addresses`` for these pages.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from random import Random
from typing import Any, Final, Literal

__all__ = ["SITES_PATH", "SiteProfile", "serve_demo_sites", "site_profile"]

SITES_PATH: Final = "/demo-sites/"
SiteKind = Literal["rich", "basic", "parked", "missing"]

_GROWTH_DIVISIONS: Final = frozenset({"58", "62", "63", "64", "66"})
#: (kind, weight) for software and finance companies, and for the rest.
_KINDS_GROWTH: Final = (("rich", 55), ("basic", 25), ("parked", 12), ("missing", 8))
_KINDS_OTHER: Final = (("rich", 20), ("basic", 35), ("parked", 30), ("missing", 15))
_STACK: Final = {
    "Stripe": '<script src="https://js.stripe.com/v3/"></script>',
    "HubSpot": '<script src="https://js.hs-scripts.com/{id}.js"></script>',
    "Intercom": '<script src="https://widget.intercom.io/widget/{id}"></script>',
    "Segment": '<script src="https://cdn.segment.com/analytics.js/v1/{id}/analytics.min.js">'
               "</script>",
    "Hotjar": '<script src="https://static.hotjar.com/c/hotjar-{id}.js?sv=6"></script>',
}
_SOCIAL: Final = {
    "x": "https://x.com/{slug}", "github": "https://github.com/{slug}",
    "youtube": "https://www.youtube.com/@{slug}",
}
_ROLES: Final = ("Software Engineer", "Senior Backend Engineer", "Product Designer",
                 "Account Executive", "Customer Success Manager", "Data Analyst",
                 "Head of Sales", "Platform Engineer", "Marketing Manager",
                 "Finance Manager", "Compliance Officer", "Engineering Manager")


@dataclasses.dataclass(frozen=True, slots=True)
class SiteProfile:
    kind: SiteKind
    stack: tuple[str, ...] = ()
    social: tuple[str, ...] = ()
    #: (role, days before today it was posted); empty: no careers page
    openings: tuple[tuple[str, int], ...] = ()
    careers: bool = False


def _pick(rng: Random, weighted: Sequence[tuple[str, int]]) -> str:
    point = rng.randrange(sum(weight for _, weight in weighted))
    for value, weight in weighted:
        if point < weight:
            return value
        point -= weight
    raise AssertionError("unreachable")


def site_profile(company_number: str, sic_codes: Sequence[str], *, seed: int) -> SiteProfile:
    """What the company's demo site holds (module docstring); deterministic."""
    rng = Random(f"site:{seed}:{company_number}")
    growing = any(code[:2] in _GROWTH_DIVISIONS for code in sic_codes)
    kind = _pick(rng, _KINDS_GROWTH if growing else _KINDS_OTHER)
    if kind == "rich":
        stack = tuple(sorted(rng.sample(sorted(_STACK), 2 + rng.randrange(3))))
        social = tuple(sorted(rng.sample(sorted(_SOCIAL), 1 + rng.randrange(3))))
        openings: tuple[tuple[str, int], ...] = ()
        if rng.random() < 0.75:
            roles = rng.sample(_ROLES, 1 + rng.randrange(5))
            openings = tuple((role, rng.randrange(42)) for role in roles)
        return SiteProfile("rich", stack, ("linkedin", *social), openings, careers=True)
    if kind == "basic":
        social = ("linkedin",) if rng.random() < 0.6 else ()
        careers = rng.random() < 0.3
        roles = rng.sample(_ROLES, 1 + rng.randrange(2)) if careers else []
        return SiteProfile("basic", (), social, tuple((role, 0) for role in roles), careers)
    return SiteProfile("parked" if kind == "parked" else "missing")


def _slug(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())[:30] or "company"


def home_page(name: str, number: str, profile: SiteProfile) -> str:
    title = html.escape(name.title())
    if profile.kind == "parked":
        return (f"<!doctype html><html><head><title>{title}</title></head><body>"
                f"<p>{title}: website coming soon.</p></body></html>")
    slug = _slug(name)
    head = ['<meta charset="utf-8">', f"<title>{title}</title>",
            '<script async src="https://www.googletagmanager.com/gtag/js?id=G-DEMO"></script>']
    if profile.kind == "basic":
        head.insert(1, '<meta name="generator" content="WordPress 6.4.2">')
        head.append(f'<link rel="stylesheet" href="/wp-content/themes/{slug}/style.css">')
    head += [_STACK[tool].format(id=number) for tool in profile.stack]
    links = []
    for platform in profile.social:
        url = ("https://www.linkedin.com/company/{slug}" if platform == "linkedin"
               else _SOCIAL[platform]).format(slug=slug)
        links.append(f'<a href="{url}">{platform.title()}</a>')
    if profile.careers:
        links.append('<a href="careers/">Careers</a>')
    return (f"<!doctype html><html lang=\"en-GB\"><head>{''.join(head)}</head><body>"
            f"<h1>{title}</h1><p>Company number {number}.</p>{' '.join(links)}"
            "</body></html>")


def careers_page(name: str, profile: SiteProfile, today: dt.date) -> str:
    title = html.escape(name.title())
    if profile.kind == "rich" and profile.openings:
        postings = [{"@type": "JobPosting", "title": role,
                     "datePosted": (today - dt.timedelta(days=age)).isoformat(),
                     "hiringOrganization": {"@type": "Organization", "name": name.title()}}
                    for role, age in profile.openings]
        data = json.dumps({"@context": "https://schema.org", "@graph": postings})
        items = "".join(f"<li>{html.escape(role)}</li>" for role, _ in profile.openings)
        return (f"<!doctype html><html><head><title>Careers at {title}</title>"
                f'<script type="application/ld+json">{data}</script></head><body>'
                f"<h1>Join {title}</h1><ul>{items}</ul></body></html>")
    items = "".join(f"<li>{html.escape(role)}</li>" for role, _ in profile.openings)
    body = f"<ul>{items}</ul>" if items else "<p>No open roles right now.</p>"
    return (f"<!doctype html><html><head><title>Careers at {title}</title></head><body>"
            f"<h1>Work with us</h1>{body}</body></html>")


@dataclasses.dataclass(frozen=True, slots=True)
class _Sites:
    #: company number -> (name, SIC codes)
    companies: Mapping[str, tuple[str, tuple[str, ...]]]
    seed: int
    today: dt.date


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo's output is its report, not an access log

    def do_GET(self) -> None:
        sites = self.server.sites
        path = self.path.split("?", 1)[0]
        parts = path.removeprefix(SITES_PATH).strip("/").split("/") \
            if path.startswith(SITES_PATH) else []
        company = sites.companies.get(parts[0]) if parts else None
        if company is None or len(parts) > 2 or (len(parts) == 2 and parts[1] != "careers"):
            self._send(404, "<h1>Not found</h1>")
            return
        name, sic_codes = company
        profile = site_profile(parts[0], sic_codes, seed=sites.seed)
        if profile.kind == "missing" or (len(parts) == 2 and not profile.careers):
            self._send(404, "<h1>Not found</h1>")
        elif len(parts) == 2:
            self._send(200, careers_page(name, profile, sites.today))
        else:
            self._send(200, home_page(name, parts[0], profile))

    def _send(self, status: int, body: str) -> None:
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sites: _Sites) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sites = sites

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (a fetch deadline) is not the demo's problem


@contextmanager
def serve_demo_sites(
    companies: Mapping[str, tuple[str, Sequence[str]]], *, seed: int, today: dt.date,
) -> Iterator[str]:
    """Serve the companies' sites while the context is open; yields the base URL
    (``http://127.0.0.1:PORT/demo-sites/``) a company number is appended to."""
    sites = _Sites({number: (name, tuple(codes)) for number, (name, codes)
                    in companies.items()}, seed, today)
    server = _Server(sites)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="demo-sites", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{SITES_PATH}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
