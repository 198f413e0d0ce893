"""Which web technologies a page uses, from what one HTTP response shows.

The table below is hand-written and curated on purpose. The usual offline detection
libraries are either GPL-3 licensed (the Wappalyzer-derived rule sets and the
``python-Wappalyzer`` / ``webtech`` packages that embed them), which this MIT project
cannot ship, or they drive a headless browser to run the page's JavaScript, which the
daemon must not depend on. A few dozen well-known technologies cover what a B2B lead
score needs (is this company selling online, measuring its marketing, talking to
visitors), and each rule here is small enough to review by eye.

Evidence kinds, strongest first:

* response headers (``server``, ``x-powered-by``, vendor headers such as
  ``x-shopify-stage``), matched by header name and a pattern on the value;
* cookie names set by the response;
* the ``<meta name="generator">`` content;
* ``<script src>`` URLs;
* patterns in the HTML itself (inline bootstraps such as ``__NEXT_DATA__``).

Patterns are deliberately specific (vendor CDN host names, unique globals) so that a
page merely *mentioning* a product does not count as using it. Only the bytes the
website fetcher kept are looked at (it truncates large pages), so evidence past the
cap is not seen; that is a known, accepted blind spot.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from typing import Final

__all__ = [
    "CATEGORIES",
    "FINGERPRINTS",
    "Detection",
    "Fingerprint",
    "PageFeatures",
    "detect",
    "extract_features",
]

#: The closed set of categories a fingerprint may have.
CATEGORIES: Final = (
    "cms", "ecommerce", "analytics", "tag_manager", "js_framework", "ui_framework", "cdn",
    "chat", "marketing_automation", "payment", "hosting", "web_server", "backend",
    "consent", "ab_testing", "scheduling", "forms", "security", "monitoring", "fonts",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Fingerprint:
    name: str
    category: str
    #: lower-case header name -> pattern on its value (``""`` means "header present").
    headers: Mapping[str, re.Pattern[str]] = dataclasses.field(default_factory=dict)
    #: patterns on cookie *names*.
    cookies: tuple[re.Pattern[str], ...] = ()
    meta_generator: re.Pattern[str] | None = None
    #: patterns on ``<script src>`` URLs.
    scripts: tuple[re.Pattern[str], ...] = ()
    #: patterns on the raw HTML.
    html: tuple[re.Pattern[str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Detection:
    name: str
    category: str
    #: Human-readable reasons, e.g. ``"header server: cloudflare"``.
    evidence: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PageFeatures:
    """What the detectors and the link scanners need from a page's HTML."""

    script_srcs: tuple[str, ...]
    meta_generators: tuple[str, ...]
    #: ``(href, anchor text)`` of every ``<a href>``.
    links: tuple[tuple[str, str], ...]


class _FeatureParser(HTMLParser):
    """Collects script sources, generator metas and anchors. The stdlib parser is
    tolerant of broken markup, which real company sites have plenty of."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.script_srcs: list[str] = []
        self.meta_generators: list[str] = []
        self.links: list[tuple[str, str]] = []
        self._open_anchor: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "script" and values.get("src"):
            self.script_srcs.append(values["src"].strip())
        elif tag == "meta" and values.get("name", "").lower() == "generator":
            self.meta_generators.append(values.get("content", "").strip())
        elif tag == "a" and values.get("href"):
            self._close_anchor()
            self._open_anchor = (values["href"].strip(), [])

    def handle_data(self, data: str) -> None:
        if self._open_anchor is not None:
            self._open_anchor[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close_anchor()

    def _close_anchor(self) -> None:
        if self._open_anchor is not None:
            href, text = self._open_anchor
            self.links.append((href, " ".join("".join(text).split())))
            self._open_anchor = None


def extract_features(html: str) -> PageFeatures:
    parser = _FeatureParser()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError:
        # HTMLParser asserts on a few pathological constructs; keep what was parsed.
        pass
    parser._close_anchor()
    return PageFeatures(
        script_srcs=tuple(parser.script_srcs),
        meta_generators=tuple(parser.meta_generators),
        links=tuple(parser.links),
    )


# The table -----------------------------------------------------------------------------


def _p(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def _h(**headers: str) -> dict[str, re.Pattern[str]]:
    """Header rules; keyword names use ``_`` for ``-`` (``x_powered_by``)."""
    return {name.replace("_", "-").lower(): _p(value) for name, value in headers.items()}


def _many(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(_p(pattern) for pattern in patterns)


FINGERPRINTS: Final[tuple[Fingerprint, ...]] = (
    # CMS -------------------------------------------------------------------------------
    Fingerprint(
        "WordPress", "cms",
        headers=_h(link=r"api\.w\.org", x_pingback=r"xmlrpc\.php"),
        cookies=_many(r"^wordpress_", r"^wp-settings-"),
        meta_generator=_p(r"^WordPress"),
        html=_many(r"/wp-content/(?:themes|plugins|uploads)/", r"/wp-includes/"),
    ),
    Fingerprint(
        "Drupal", "cms",
        headers=_h(x_drupal_cache=r"", x_generator=r"Drupal", x_drupal_dynamic_cache=r""),
        meta_generator=_p(r"^Drupal"),
        html=_many(r"/sites/(?:default|all)/(?:files|themes|modules)/", r"Drupal\.settings"),
    ),
    Fingerprint(
        "Joomla", "cms",
        meta_generator=_p(r"^Joomla"),
        html=_many(r"/media/jui/js/", r"/components/com_[a-z]+/"),
    ),
    Fingerprint(
        "Squarespace", "cms",
        headers=_h(server=r"^Squarespace"),
        cookies=_many(r"^SS_MID$", r"^crumb$"),
        scripts=_many(r"static1?\.squarespace\.com/"),
        html=_many(r"static1?\.squarespace\.com/", r"Static\.SQUARESPACE_CONTEXT"),
    ),
    Fingerprint(
        "Wix", "cms",
        headers=_h(x_wix_request_id=r""),
        meta_generator=_p(r"^Wix\.com"),
        html=_many(r"static\.wixstatic\.com/", r"static\.parastorage\.com/"),
    ),
    Fingerprint(
        "Webflow", "cms",
        meta_generator=_p(r"^Webflow"),
        html=_many(r"\bdata-wf-(?:page|site)=", r"(?:assets|uploads-ssl)\.website-files\.com/"),
    ),
    Fingerprint(
        "Ghost", "cms",
        headers=_h(x_ghost_cache_status=r""),
        meta_generator=_p(r"^Ghost"),
        html=_many(r"/ghost/api/content/"),
    ),
    Fingerprint(
        "HubSpot CMS", "cms",
        headers=_h(x_hs_hub_id=r"", x_hs_content_id=r""),
        meta_generator=_p(r"^HubSpot"),
    ),
    Fingerprint(
        "Gatsby", "cms",
        meta_generator=_p(r"^Gatsby"),
        html=_many(r'id="___gatsby"'),
    ),
    # E-commerce ------------------------------------------------------------------------
    Fingerprint(
        "Shopify", "ecommerce",
        headers=_h(x_shopify_stage=r"", x_shopid=r"", powered_by=r"Shopify",
                   x_shopify_request_id=r""),
        cookies=_many(r"^_shopify_[ys]$", r"^cart_sig$", r"^_shopify_sa_[pt]$"),
        scripts=_many(r"cdn\.shopify\.com/"),
        html=_many(r"cdn\.shopify\.com/", r"\bShopify\.shop\s*="),
    ),
    Fingerprint(
        "WooCommerce", "ecommerce",
        cookies=_many(r"^woocommerce_(?:items_in_cart|cart_hash)$", r"^wp_woocommerce_session_"),
        meta_generator=_p(r"^WooCommerce"),
        html=_many(r"/wp-content/plugins/woocommerce/", r"\bwoocommerce-(?:page|cart|checkout)\b"),
    ),
    Fingerprint(
        "Magento", "ecommerce",
        headers=_h(x_magento_cache_debug=r"", x_magento_tags=r""),
        cookies=_many(r"^mage-(?:cache-sessid|messages|translation-storage)$"),
        html=_many(r"/static/version\d+/frontend/", r"\bMage\.Cookies\b",
                   r"data-mage-init="),
    ),
    Fingerprint(
        "BigCommerce", "ecommerce",
        headers=_h(x_bc_storefront=r""),
        scripts=_many(r"cdn\d*\.bigcommerce\.com/"),
        html=_many(r"cdn\d*\.bigcommerce\.com/"),
    ),
    Fingerprint(
        "PrestaShop", "ecommerce",
        headers=_h(powered_by=r"PrestaShop"),
        cookies=_many(r"^PrestaShop-[0-9a-f]+$"),
        meta_generator=_p(r"^PrestaShop"),
    ),
    Fingerprint(
        "Ecwid", "ecommerce",
        scripts=_many(r"app\.ecwid\.com/script\.js"),
    ),
    # Analytics -------------------------------------------------------------------------
    Fingerprint(
        "Google Analytics", "analytics",
        cookies=_many(r"^_ga$", r"^_ga_[A-Z0-9]+$", r"^_gid$"),
        scripts=_many(r"google-analytics\.com/(?:analytics|ga)\.js",
                      r"googletagmanager\.com/gtag/js"),
        html=_many(r"google-analytics\.com/(?:analytics|ga)\.js",
                   r"googletagmanager\.com/gtag/js\?id=(?:G|UA)-"),
    ),
    Fingerprint(
        "Hotjar", "analytics",
        cookies=_many(r"^_hjSessionUser_\d+$", r"^_hjid$"),
        scripts=_many(r"static\.hotjar\.com/"),
        html=_many(r"static\.hotjar\.com/c/hotjar-"),
    ),
    Fingerprint(
        "Matomo", "analytics",
        cookies=_many(r"^_pk_(?:id|ses)\."),
        scripts=_many(r"/(?:matomo|piwik)\.js"),
        html=_many(r"_paq\.push\("),
    ),
    Fingerprint(
        "Plausible", "analytics",
        scripts=_many(r"plausible\.io/js/"),
    ),
    Fingerprint(
        "Mixpanel", "analytics",
        scripts=_many(r"cdn(?:4)?\.mxpnl\.com/", r"cdn\.mixpanel\.com/"),
        html=_many(r"\bmixpanel\.init\("),
    ),
    Fingerprint(
        "Segment", "analytics",
        scripts=_many(r"cdn\.segment\.(?:com|io)/analytics\.js"),
        html=_many(r"cdn\.segment\.(?:com|io)/analytics\.js"),
    ),
    Fingerprint(
        "Heap", "analytics",
        scripts=_many(r"cdn\.heapanalytics\.com/"),
        html=_many(r"cdn\.heapanalytics\.com/"),
    ),
    Fingerprint(
        "Microsoft Clarity", "analytics",
        scripts=_many(r"clarity\.ms/tag/"),
        html=_many(r"clarity\.ms/tag/"),
    ),
    Fingerprint(
        "Meta Pixel", "analytics",
        cookies=_many(r"^_fbp$"),
        scripts=_many(r"connect\.facebook\.net/[^\"']*/fbevents\.js"),
        html=_many(r"connect\.facebook\.net/[^\"']*/fbevents\.js", r"\bfbq\(\s*['\"]init['\"]"),
    ),
    Fingerprint(
        "LinkedIn Insight Tag", "analytics",
        scripts=_many(r"snap\.licdn\.com/li\.lms-analytics/"),
        html=_many(r"snap\.licdn\.com/li\.lms-analytics/", r"_linkedin_partner_id"),
    ),
    # Tag managers ----------------------------------------------------------------------
    Fingerprint(
        "Google Tag Manager", "tag_manager",
        scripts=_many(r"googletagmanager\.com/gtm\.js"),
        html=_many(r"googletagmanager\.com/gtm\.js", r"googletagmanager\.com/ns\.html\?id=GTM-"),
    ),
    Fingerprint(
        "Tealium", "tag_manager",
        scripts=_many(r"tags\.tiqcdn\.com/utag/"),
    ),
    # JavaScript frameworks and libraries -----------------------------------------------
    Fingerprint(
        "React", "js_framework",
        scripts=_many(r"/react(?:-dom)?(?:\.production)?(?:\.min)?\.js",
                      r"unpkg\.com/react(?:-dom)?@"),
        html=_many(r"\bdata-reactroot\b", r"\bdata-reactid=", r"__NEXT_DATA__",
                   r'id="___gatsby"'),
    ),
    Fingerprint(
        "Next.js", "js_framework",
        headers=_h(x_powered_by=r"Next\.js", x_nextjs_cache=r""),
        html=_many(r'<script id="__NEXT_DATA__"', r"/_next/static/"),
    ),
    Fingerprint(
        "Vue.js", "js_framework",
        scripts=_many(r"/vue(?:\.runtime)?(?:\.global)?(?:\.prod)?(?:\.min)?\.js",
                      r"unpkg\.com/vue@"),
        html=_many(r"\bdata-v-[0-9a-f]{8}\b", r"\bdata-server-rendered=\"true\""),
    ),
    Fingerprint(
        "Nuxt.js", "js_framework",
        headers=_h(x_powered_by=r"Nuxt"),
        html=_many(r"window\.__NUXT__", r"/_nuxt/"),
    ),
    Fingerprint(
        "Angular", "js_framework",
        html=_many(r"\bng-version=\"\d", r"\bng-app=", r"/angular(?:\.min)?\.js"),
    ),
    Fingerprint(
        "Svelte", "js_framework",
        html=_many(r"\bclass=\"[^\"]*\bsvelte-[a-z0-9]{5,}\b", r"__sveltekit_"),
    ),
    Fingerprint(
        "jQuery", "js_framework",
        scripts=_many(r"/jquery(?:[-.]\d+(?:\.\d+)*)?(?:\.slim)?(?:\.min)?\.js",
                      r"code\.jquery\.com/"),
    ),
    Fingerprint(
        "Alpine.js", "js_framework",
        scripts=_many(r"alpinejs"),
        html=_many(r"\bx-data=\"", r"\bx-data>"),
    ),
    Fingerprint(
        "Bootstrap", "ui_framework",
        scripts=_many(r"/bootstrap(?:\.bundle)?(?:\.min)?\.js"),
        html=_many(r"/bootstrap(?:\.min)?\.css", r"cdn\.jsdelivr\.net/npm/bootstrap@"),
    ),
    Fingerprint(
        "Tailwind CSS", "ui_framework",
        scripts=_many(r"cdn\.tailwindcss\.com"),
        html=_many(r"/tailwind(?:\.min)?\.css", r"cdn\.tailwindcss\.com"),
    ),
    # CDNs ------------------------------------------------------------------------------
    Fingerprint(
        "Cloudflare", "cdn",
        headers=_h(server=r"^cloudflare", cf_ray=r"", cf_cache_status=r""),
        cookies=_many(r"^__cf_bm$", r"^__cfduid$", r"^_cfuvid$", r"^cf_clearance$"),
        scripts=_many(r"/cdn-cgi/"),
    ),
    Fingerprint(
        "Fastly", "cdn",
        headers=_h(x_fastly_request_id=r"", x_served_by=r"^cache-", fastly_debug_digest=r""),
    ),
    Fingerprint(
        "Akamai", "cdn",
        headers=_h(server=r"^AkamaiGHost", x_akamai_transformed=r"",
                   akamai_grn=r""),
    ),
    Fingerprint(
        "Amazon CloudFront", "cdn",
        headers=_h(x_amz_cf_id=r"", x_amz_cf_pop=r"", via=r"CloudFront"),
    ),
    Fingerprint(
        "jsDelivr", "cdn",
        scripts=_many(r"cdn\.jsdelivr\.net/"),
    ),
    Fingerprint(
        "cdnjs", "cdn",
        scripts=_many(r"cdnjs\.cloudflare\.com/"),
    ),
    # Chat and support widgets ----------------------------------------------------------
    Fingerprint(
        "Intercom", "chat",
        cookies=_many(r"^intercom-(?:id|session|device-id)-"),
        scripts=_many(r"widget\.intercom\.io/widget/", r"js\.intercomcdn\.com/"),
        html=_many(r"widget\.intercom\.io/widget/", r"window\.intercomSettings"),
    ),
    Fingerprint(
        "Drift", "chat",
        scripts=_many(r"js\.driftt\.com/"),
        html=_many(r"js\.driftt\.com/", r"\bdrift\.load\("),
    ),
    Fingerprint(
        "Zendesk", "chat",
        scripts=_many(r"static\.zdassets\.com/"),
        html=_many(r"static\.zdassets\.com/ekr/snippet\.js"),
    ),
    Fingerprint(
        "LiveChat", "chat",
        scripts=_many(r"cdn\.livechatinc\.com/"),
        html=_many(r"cdn\.livechatinc\.com/", r"__lc\.license"),
    ),
    Fingerprint(
        "Tawk.to", "chat",
        scripts=_many(r"embed\.tawk\.to/"),
        html=_many(r"embed\.tawk\.to/"),
    ),
    Fingerprint(
        "Crisp", "chat",
        scripts=_many(r"client\.crisp\.chat/"),
        html=_many(r"client\.crisp\.chat/", r"CRISP_WEBSITE_ID"),
    ),
    Fingerprint(
        "Tidio", "chat",
        scripts=_many(r"code\.tidio\.co/"),
    ),
    Fingerprint(
        "Freshchat", "chat",
        scripts=_many(r"wchat\.freshchat\.com/", r"\.freshchat\.com/js/widget\.js"),
    ),
    Fingerprint(
        "Zoho SalesIQ", "chat",
        scripts=_many(r"salesiq\.zoho(?:public)?\.(?:com|eu|in)/"),
    ),
    # Marketing automation --------------------------------------------------------------
    Fingerprint(
        "HubSpot", "marketing_automation",
        cookies=_many(r"^hubspotutk$", r"^__hs(?:tc|sc|srd)$"),
        scripts=_many(r"js\.hs-scripts\.com/", r"js\.hsforms\.net/", r"js\.hs-analytics\.net/",
                      r"js\.hs-banner\.com/"),
        html=_many(r"js\.hs-scripts\.com/\d+\.js", r"hbspt\.forms\.create\("),
    ),
    Fingerprint(
        "Marketo", "marketing_automation",
        cookies=_many(r"^_mkto_trk$"),
        scripts=_many(r"munchkin\.marketo\.net/"),
        html=_many(r"munchkin\.marketo\.net/", r"\bMunchkin\.init\("),
    ),
    Fingerprint(
        "Pardot", "marketing_automation",
        cookies=_many(r"^visitor_id\d+$", r"^pardot$"),
        scripts=_many(r"pi\.pardot\.com/", r"cdn\.pardot\.com/"),
        html=_many(r"\bpiAId\s*=", r"pi\.pardot\.com/pd\.js"),
    ),
    Fingerprint(
        "Mailchimp", "marketing_automation",
        scripts=_many(r"chimpstatic\.com/", r"\.list-manage\.com/"),
        html=_many(r"\.list-manage\.com/subscribe", r"chimpstatic\.com/mcjs-connected/"),
    ),
    Fingerprint(
        "ActiveCampaign", "marketing_automation",
        scripts=_many(r"trackcmp\.net/", r"\.activehosted\.com/"),
        html=_many(r"trackcmp\.net/visit"),
    ),
    Fingerprint(
        "Klaviyo", "marketing_automation",
        cookies=_many(r"^__kla_id$"),
        scripts=_many(r"static\.klaviyo\.com/", r"static-tracking\.klaviyo\.com/"),
    ),
    # Payments --------------------------------------------------------------------------
    Fingerprint(
        "Stripe", "payment",
        cookies=_many(r"^__stripe_(?:mid|sid)$"),
        scripts=_many(r"js\.stripe\.com/v\d"),
        html=_many(r"js\.stripe\.com/v\d", r"\bStripe\(\s*['\"]pk_(?:live|test)_"),
    ),
    Fingerprint(
        "PayPal", "payment",
        scripts=_many(r"paypal\.com/sdk/js", r"paypalobjects\.com/"),
        html=_many(r"paypal\.com/sdk/js", r"paypalobjects\.com/api/checkout\.js"),
    ),
    Fingerprint(
        "Klarna", "payment",
        scripts=_many(r"(?:x|js)\.klarnacdn\.net/", r"klarnaservices\.com/lib\.js"),
    ),
    Fingerprint(
        "Square", "payment",
        scripts=_many(r"web\.squarecdn\.com/", r"js\.squareup(?:sandbox)?\.com/"),
    ),
    Fingerprint(
        "Braintree", "payment",
        scripts=_many(r"js\.braintreegateway\.com/"),
    ),
    Fingerprint(
        "GoCardless", "payment",
        scripts=_many(r"pay\.gocardless\.com/", r"\.gocardless\.com/.*\.js"),
    ),
    # Hosting platforms -----------------------------------------------------------------
    Fingerprint(
        "Vercel", "hosting",
        headers=_h(server=r"^Vercel", x_vercel_id=r"", x_vercel_cache=r""),
    ),
    Fingerprint(
        "Netlify", "hosting",
        headers=_h(server=r"^Netlify", x_nf_request_id=r""),
    ),
    Fingerprint(
        "GitHub Pages", "hosting",
        headers=_h(server=r"^GitHub\.com", x_github_request_id=r""),
    ),
    Fingerprint(
        "Heroku", "hosting",
        headers=_h(via=r"\bvegur\b"),
    ),
    Fingerprint(
        "WP Engine", "hosting",
        headers=_h(x_powered_by=r"WP Engine", wpe_backend=r""),
    ),
    Fingerprint(
        "Amazon S3", "hosting",
        headers=_h(server=r"^AmazonS3", x_amz_request_id=r""),
    ),
    # Web servers -----------------------------------------------------------------------
    Fingerprint("Nginx", "web_server", headers=_h(server=r"^nginx")),
    Fingerprint("Apache HTTP Server", "web_server", headers=_h(server=r"^Apache")),
    Fingerprint("Microsoft IIS", "web_server", headers=_h(server=r"^Microsoft-IIS")),
    Fingerprint("LiteSpeed", "web_server", headers=_h(server=r"^LiteSpeed")),
    Fingerprint("Caddy", "web_server", headers=_h(server=r"^Caddy")),
    Fingerprint(
        "Varnish", "web_server",
        headers=_h(x_varnish=r"", via=r"varnish"),
    ),
    # Backend languages and frameworks --------------------------------------------------
    Fingerprint(
        "PHP", "backend",
        headers=_h(x_powered_by=r"^PHP"),
        cookies=_many(r"^PHPSESSID$"),
    ),
    Fingerprint(
        "ASP.NET", "backend",
        headers=_h(x_powered_by=r"^ASP\.NET", x_aspnet_version=r"", x_aspnetmvc_version=r""),
        cookies=_many(r"^ASP\.NET_SessionId$", r"^\.AspNetCore\."),
        html=_many(r'<input[^>]+name="__VIEWSTATE"'),
    ),
    Fingerprint(
        "Express", "backend",
        headers=_h(x_powered_by=r"^Express"),
    ),
    Fingerprint(
        "Django", "backend",
        cookies=_many(r"^csrftoken$", r"^django_language$"),
        html=_many(r'name="csrfmiddlewaretoken"'),
    ),
    Fingerprint(
        "Laravel", "backend",
        cookies=_many(r"^laravel_session$"),
    ),
    Fingerprint(
        "Ruby on Rails", "backend",
        headers=_h(x_powered_by=r"Phusion Passenger"),
        html=_many(r'<meta name="csrf-param" content="authenticity_token"'),
    ),
    # Consent, testing, scheduling, forms, security, monitoring, fonts -----------------
    Fingerprint(
        "Cookiebot", "consent",
        scripts=_many(r"consent\.cookiebot\.com/"),
    ),
    Fingerprint(
        "OneTrust", "consent",
        cookies=_many(r"^OptanonConsent$", r"^OptanonAlertBoxClosed$"),
        scripts=_many(r"cdn\.cookielaw\.org/", r"optanon\.blob\.core\.windows\.net/"),
    ),
    Fingerprint(
        "Optimizely", "ab_testing",
        cookies=_many(r"^optimizelyEndUserId$"),
        scripts=_many(r"cdn\.optimizely\.com/js/"),
    ),
    Fingerprint(
        "VWO", "ab_testing",
        cookies=_many(r"^_vwo_uuid"),
        scripts=_many(r"dev\.visualwebsiteoptimizer\.com/"),
        html=_many(r"dev\.visualwebsiteoptimizer\.com/"),
    ),
    Fingerprint(
        "Calendly", "scheduling",
        scripts=_many(r"assets\.calendly\.com/"),
        html=_many(r"calendly-inline-widget", r"assets\.calendly\.com/assets/external/widget"),
    ),
    Fingerprint(
        "Typeform", "forms",
        scripts=_many(r"embed\.typeform\.com/"),
    ),
    Fingerprint(
        "reCAPTCHA", "security",
        scripts=_many(r"(?:www\.)?google\.com/recaptcha/", r"recaptcha\.net/recaptcha/"),
        html=_many(r"\bclass=\"g-recaptcha\""),
    ),
    Fingerprint(
        "Sentry", "monitoring",
        scripts=_many(r"browser\.sentry-cdn\.com/", r"js\.sentry-cdn\.com/"),
        html=_many(r"\bSentry\.init\("),
    ),
    Fingerprint(
        "New Relic", "monitoring",
        html=_many(r"js-agent\.newrelic\.com/", r"\bNREUM\b"),
    ),
    Fingerprint(
        "Google Fonts", "fonts",
        html=_many(r"fonts\.googleapis\.com/css", r"fonts\.gstatic\.com/"),
    ),
    Fingerprint(
        "Font Awesome", "fonts",
        scripts=_many(r"kit\.fontawesome\.com/", r"use\.fontawesome\.com/"),
        html=_many(r"/font-?awesome(?:\.min)?\.css", r"kit\.fontawesome\.com/"),
    ),
    Fingerprint(
        "Adobe Fonts", "fonts",
        html=_many(r"use\.typekit\.net/"),
    ),
)


# Detection -----------------------------------------------------------------------------


def detect(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    html: str,
    cookies: Mapping[str, str] | Iterable[str],
    *,
    features: PageFeatures | None = None,
) -> list[Detection]:
    """Every fingerprint with at least one piece of evidence, ordered by category then
    name. ``headers`` may repeat a name (pairs); ``cookies`` are names (values unused).
    ``features`` saves a second parse when the caller already has them."""
    header_pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    header_values: dict[str, list[str]] = {}
    for name, value in header_pairs:
        header_values.setdefault(name.lower(), []).append(value)
    cookie_names = list(cookies.keys()) if isinstance(cookies, Mapping) else list(cookies)
    if features is None:
        features = extract_features(html) if html else PageFeatures((), (), ())

    found: list[Detection] = []
    for fingerprint in FINGERPRINTS:
        evidence = _evidence(fingerprint, header_values, cookie_names, features, html)
        if evidence:
            found.append(Detection(fingerprint.name, fingerprint.category, tuple(evidence)))
    found.sort(key=lambda d: (d.category, d.name.lower()))
    return found


def _evidence(
    fingerprint: Fingerprint,
    header_values: Mapping[str, list[str]],
    cookie_names: list[str],
    features: PageFeatures,
    html: str,
) -> list[str]:
    evidence: list[str] = []
    for name, pattern in fingerprint.headers.items():
        for value in header_values.get(name, ()):
            if pattern.search(value):
                evidence.append(f"header {name}: {_short(value)}")
                break
    for pattern in fingerprint.cookies:
        for cookie in cookie_names:
            if pattern.search(cookie):
                evidence.append(f"cookie {cookie}")
                break
    if fingerprint.meta_generator is not None:
        for generator in features.meta_generators:
            if fingerprint.meta_generator.search(generator):
                evidence.append(f"meta generator: {_short(generator)}")
                break
    for pattern in fingerprint.scripts:
        for src in features.script_srcs:
            if pattern.search(src):
                evidence.append(f"script {_short(src)}")
                break
    for pattern in fingerprint.html:
        match = pattern.search(html)
        if match:
            evidence.append(f"html {_short(match.group(0))}")
    return evidence


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
