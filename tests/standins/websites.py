"""Fake company websites on one local server, one site per path prefix
(``site_url("saas")`` -> ``http://127.0.0.1:PORT/saas/``), each with a recognisable
stack, careers pages for the scout (``/wordpress/careers/`` lists two roles as list
items, ``/hiring/jobs/`` publishes three schema.org JobPostings, ``/small/careers/``
one role), plus the hostile cases the fetcher must bound: an oversized page, a slow page,
a trickling page, a redirect loop, a redirect to ``ftp:``, a JSON document and a 404;
and ``/nul/``, whose title, description, text and careers link carry NUL characters
(which Postgres cannot store).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.standins.server import QuietHandler, serve_in_background

__all__ = [
    "OVERSIZED_BYTES",
    "WebsitesStandIn",
    "running_websites",
    "websites_server",
]

#: The oversized page's length: well past the fetcher's 1 MiB default cap.
OVERSIZED_BYTES = 3 * 1024 * 1024

_WORDPRESS = """<!doctype html>
<html lang="en-GB"><head>
<meta charset="utf-8">
<meta name="generator" content="WordPress 6.4.2">
<title>Acme Widgets</title>
<link rel="stylesheet" href="/wp-content/themes/acme/style.css">
<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Inter">
<script async src="https://www.googletagmanager.com/gtag/js?id=G-ABC123"></script>
<script src="/wp-includes/js/jquery/jquery.min.js"></script>
</head><body>
<h1>Acme Widgets</h1>
<a href="https://www.linkedin.com/company/acme-widgets">LinkedIn</a>
<a href="https://twitter.com/acmewidgets">Twitter</a>
<a href="https://www.facebook.com/acmewidgets">Facebook</a>
<a href="https://www.facebook.com/sharer/sharer.php?u=https://acme.example">Share</a>
<a href="/wordpress/careers/">Careers</a>
</body></html>
"""

_CAREERS = """<!doctype html><html><head><title>Careers</title></head><body>
<h1>Join us</h1><ul><li>Senior engineer</li><li>Account executive</li></ul>
</body></html>
"""

_HIRING = """<!doctype html><html><head><title>Hiring Co</title></head><body>
<nav><ul><li><a href="/hiring/">Home</a></li><li><a href="/hiring/jobs/">Jobs</a></li></ul></nav>
<h1>Hiring Co</h1><p>We build ledgers.</p>
<a href="/hiring/jobs/">Open positions</a>
</body></html>
"""

# Openings as job boards publish them for search engines (schema.org JobPosting).
_HIRING_JOBS = """<!doctype html><html><head><title>Jobs at Hiring Co</title>
<script type="application/ld+json">
{"@context": "https://schema.org", "@graph": [
  {"@type": "JobPosting", "title": "Platform Engineer", "datePosted": "2020-01-06",
   "hiringOrganization": {"@type": "Organization", "name": "Hiring Co"}},
  {"@type": "JobPosting", "title": "Head of Sales", "datePosted": "2020-01-02"},
  {"@type": "JobPosting", "title": "Data Analyst", "datePosted": "2020-01-03"}
]}
</script></head><body>
<nav><ul><li>Home</li><li>Jobs</li></ul></nav>
<h1>Jobs</h1><ul><li>Platform Engineer</li><li>Head of Sales</li><li>Data Analyst</li></ul>
<footer><ul><li>Privacy</li></ul></footer>
</body></html>
"""

_SMALL = """<!doctype html><html><head><title>Small Co</title></head><body>
<a href="/small/careers/">Careers</a></body></html>
"""

_SMALL_CAREERS = """<!doctype html><html><head><title>Careers</title></head><body>
<h1>Work with us</h1><ul><li>Office manager</li></ul></body></html>
"""

_SHOP = """<!doctype html>
<html><head><title>Shop</title>
<script src="https://cdn.shopify.com/s/files/1/0000/0001/t/1/assets/theme.js"></script>
<script async src="https://static.klaviyo.com/onsite/js/klaviyo.js?company_id=X"></script>
<script>(function(w,d,s,l,i){})(window,document,'script','dataLayer','GTM-ABCD12');</script>
<script async src="https://www.googletagmanager.com/gtm.js?id=GTM-ABCD12"></script>
</head><body>
<a href="https://www.instagram.com/shop">Instagram</a>
<a href="https://www.tiktok.com/@shop">TikTok</a>
<a href="https://www.facebook.com/shop">Facebook</a>
<a href="https://www.youtube.com/@shop">YouTube</a>
</body></html>
"""

_SAAS = """<!doctype html>
<html><head><title>SaaS</title>
<script src="https://www.googletagmanager.com/gtm.js?id=GTM-XYZ789"></script>
<script src="https://js.hs-scripts.com/1234567.js"></script>
<script src="https://widget.intercom.io/widget/abc123"></script>
<script src="https://js.stripe.com/v3/"></script>
<script src="https://cdn.segment.com/analytics.js/v1/KEY/analytics.min.js"></script>
<script src="/_next/static/chunks/main-abc.js"></script>
</head><body><div id="__next"></div>
<a href="https://www.linkedin.com/company/saas-co/">LinkedIn</a>
<a href="https://x.com/saasco">X</a>
<a href="https://github.com/saasco">GitHub</a>
<a href="https://www.youtube.com/channel/UC123">YouTube</a>
<a href="https://boards.greenhouse.io/saasco">Join our team</a>
<script id="__NEXT_DATA__" type="application/json">{"props":{}}</script>
</body></html>
"""

_PLAIN = """<!doctype html><html><head><title>Plain</title></head>
<body><p>We make things. Call us.</p><a href="/plain/about">About</a></body></html>
"""

# NUL characters where a scraper picks up text: title, description, body, a link.
_NUL = """<!doctype html><html><head><title>Nul\x00 Industries</title>
<meta name="description" content="We make\x00 things">
</head><body><p>Hand\x00made goods.</p>
<a href="/nul/careers\x00/">Careers\x00</a></body></html>
"""

#: Pages: path -> (status, headers, body).
_PAGES: dict[str, tuple[int, list[tuple[str, str]], str]] = {
    "/wordpress/": (200, [
        ("Content-Type", "text/html; charset=UTF-8"),
        ("Server", "cloudflare"),
        ("CF-RAY", "8a1b2c3d4e5f6789-LHR"),
        ("Link", '<https://acme.example/wp-json/>; rel="https://api.w.org/"'),
        ("Set-Cookie", "__cf_bm=abc; path=/; HttpOnly"),
    ], _WORDPRESS),
    "/wordpress/careers/": (200, [("Content-Type", "text/html")], _CAREERS),
    "/hiring/": (200, [("Content-Type", "text/html; charset=utf-8")], _HIRING),
    "/hiring/jobs/": (200, [("Content-Type", "text/html; charset=utf-8")], _HIRING_JOBS),
    "/small/": (200, [("Content-Type", "text/html")], _SMALL),
    "/small/careers/": (200, [("Content-Type", "text/html")], _SMALL_CAREERS),
    "/shop/": (200, [
        ("Content-Type", "text/html; charset=utf-8"),
        ("X-Shopify-Stage", "production"),
        ("X-ShopId", "12345678"),
        ("Powered-By", "Shopify"),
        ("Set-Cookie", "_shopify_y=abc; path=/"),
        ("Set-Cookie", "_shopify_s=def; path=/"),
    ], _SHOP),
    "/saas/": (200, [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Server", "Vercel"),
        ("X-Vercel-Id", "lhr1::abc"),
        ("X-Powered-By", "Next.js"),
    ], _SAAS),
    "/plain/": (200, [("Content-Type", "text/html")], _PLAIN),
    "/nul/": (200, [("Content-Type", "text/html; charset=utf-8")], _NUL),
    "/json/": (200, [("Content-Type", "application/json")], '{"hello": "world"}'),
}

_REDIRECTS: dict[str, str] = {
    "/hop/1": "/hop/2",
    "/hop/2": "/wordpress/",
    "/loop/a": "/loop/b",
    "/loop/b": "/loop/a",
    "/to-ftp/": "ftp://files.example/",
}


class WebsitesStandIn:
    def __init__(self) -> None:
        self.url = ""
        #: How long ``/slow/`` waits before answering at all.
        self.slow_seconds = 5.0
        self.requests: list[str] = []
        self._lock = threading.Lock()
        #: Set when the server stops, so sleeping handlers end at once.
        self.stopping = threading.Event()

    def site_url(self, name: str) -> str:
        return f"{self.url}/{name}/"

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)


class _Handler(QuietHandler):
    def do_GET(self) -> None:
        standin: WebsitesStandIn = self.server.state
        path = self.path.split("?", 1)[0]
        standin.record(path)
        if path in _REDIRECTS:
            self.send_response(302)
            self.send_header("Location", _REDIRECTS[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path == "/big/":
            self._oversized()
            return
        if path == "/slow/":
            standin.stopping.wait(standin.slow_seconds)
            self._send(200, [("Content-Type", "text/html")], _PLAIN)
            return
        if path == "/trickle/":
            self._trickle(standin)
            return
        page = _PAGES.get(path)
        if page is None:
            self._send(404, [("Content-Type", "text/html")], "<h1>Not found</h1>")
            return
        self._send(*page)

    def _send(self, status: int, headers: list[tuple[str, str]], body: str) -> None:
        payload = body.encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _oversized(self) -> None:
        # Evidence past the cap: a fetcher that ignored the cap would detect Stripe.
        head = b"<!doctype html><html><head><title>Big</title></head><body>"
        tail = b'<script src="https://js.stripe.com/v3/"></script></body></html>'
        filler = b"<p>" + b"x" * 1020 + b"</p>"
        count = (OVERSIZED_BYTES - len(head) - len(tail)) // len(filler)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(head) + count * len(filler) + len(tail)))
        self.end_headers()
        try:
            self.wfile.write(head)
            for _ in range(count):
                self.wfile.write(filler)
            self.wfile.write(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its cap, as it should

    def _trickle(self, standin: WebsitesStandIn) -> None:
        # Headers at once, then a byte every 0.2 s: each read is quick, the whole is not.
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        try:
            self.wfile.write(b"<html><body>")
            self.wfile.flush()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not standin.stopping.wait(0.2):
                self.wfile.write(b".")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def running_websites() -> Iterator[WebsitesStandIn]:
    standin = WebsitesStandIn()
    with serve_in_background(_Handler, standin) as url:
        standin.url = url
        try:
            yield standin
        finally:
            # Release sleeping handlers before the server shuts down.
            standin.stopping.set()


@pytest.fixture
def websites_server() -> Iterator[WebsitesStandIn]:
    with running_websites() as standin:
        yield standin
