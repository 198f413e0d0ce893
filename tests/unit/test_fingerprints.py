"""The fingerprint table and detect(): size, well-formedness, and detections on samples."""

from __future__ import annotations

import re

import pytest

from agents.fingerprints import CATEGORIES, FINGERPRINTS, Detection, detect, extract_features


def _names(detections: list[Detection]) -> set[str]:
    return {d.name for d in detections}


def test_table_has_at_least_fifty_well_formed_entries() -> None:
    assert len(FINGERPRINTS) >= 50
    names = [f.name for f in FINGERPRINTS]
    assert len(names) == len(set(names)), "duplicate fingerprint names"
    for fingerprint in FINGERPRINTS:
        assert fingerprint.category in CATEGORIES, fingerprint.name
        patterns = [
            *fingerprint.headers.values(), *fingerprint.cookies, *fingerprint.scripts,
            *fingerprint.html,
            *([fingerprint.meta_generator] if fingerprint.meta_generator else []),
        ]
        assert patterns, f"{fingerprint.name} has no evidence rules"
        for pattern in patterns:
            assert isinstance(pattern, re.Pattern)
            # Recompiling proves the source is a valid expression on its own.
            re.compile(pattern.pattern, pattern.flags)
        assert all(name == name.lower() for name in fingerprint.headers), fingerprint.name


def test_table_covers_the_categories_a_lead_score_needs() -> None:
    covered = {f.category for f in FINGERPRINTS}
    for category in ("cms", "ecommerce", "analytics", "tag_manager", "js_framework", "cdn",
                     "chat", "marketing_automation", "payment", "hosting", "web_server"):
        assert category in covered


def test_nothing_is_detected_on_an_empty_plain_page() -> None:
    html = "<html><head><title>Hello</title></head><body><p>Plain.</p></body></html>"
    assert detect({"Content-Type": "text/html"}, html, {}) == []
    assert detect({}, "", []) == []


def test_header_evidence_is_case_insensitive_and_reported() -> None:
    found = detect({"Server": "cloudflare", "CF-RAY": "8a1b-LHR", "X-Powered-By": "PHP/8.2"},
                   "", [])
    by_name = {d.name: d for d in found}
    assert set(by_name) == {"Cloudflare", "PHP"}
    assert by_name["Cloudflare"].category == "cdn"
    assert "header server: cloudflare" in by_name["Cloudflare"].evidence
    assert "header cf-ray: 8a1b-LHR" in by_name["Cloudflare"].evidence


def test_repeated_headers_are_all_considered() -> None:
    found = detect([("via", "1.1 varnish"), ("via", "1.1 abc.cloudfront.net (CloudFront)")],
                   "", [])
    assert {"Varnish", "Amazon CloudFront"} <= _names(found)


def test_shopify_from_headers_cookies_and_scripts() -> None:
    html = '<script src="https://cdn.shopify.com/s/files/1/theme.js"></script>'
    found = detect({"x-shopify-stage": "production"}, html, {"_shopify_y": "1", "other": "2"})
    [shopify] = [d for d in found if d.name == "Shopify"]
    assert shopify.category == "ecommerce"
    assert any(e.startswith("header x-shopify-stage") for e in shopify.evidence)
    assert "cookie _shopify_y" in shopify.evidence
    assert any(e.startswith("script https://cdn.shopify.com/") for e in shopify.evidence)


def test_wordpress_from_the_generator_meta_in_either_attribute_order() -> None:
    for meta in ('<meta name="generator" content="WordPress 6.4.2">',
                 "<meta content='WordPress 6.5' name='Generator'>"):
        found = detect({}, f"<html><head>{meta}</head></html>", [])
        assert "WordPress" in _names(found), meta


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('<script async src="https://www.googletagmanager.com/gtag/js?id=G-XYZ"></script>',
         "Google Analytics"),
        ('<script src="https://www.googletagmanager.com/gtm.js?id=GTM-ABC"></script>',
         "Google Tag Manager"),
        ('<script src="https://js.hs-scripts.com/123456.js"></script>', "HubSpot"),
        ('<script src="https://widget.intercom.io/widget/abc"></script>', "Intercom"),
        ('<script src="https://js.stripe.com/v3/"></script>', "Stripe"),
        ('<div data-reactroot=""></div>', "React"),
        ('<script id="__NEXT_DATA__" type="application/json">{}</script>', "Next.js"),
        ('<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>', "jQuery"),
        ('<script src="https://static.hotjar.com/c/hotjar-1.js?sv=6"></script>', "Hotjar"),
        ('<script src="https://embed.tawk.to/abc/default"></script>', "Tawk.to"),
        ('<script src="https://munchkin.marketo.net/munchkin.js"></script>', "Marketo"),
        ('<link href="https://fonts.googleapis.com/css2?family=Inter" rel="stylesheet">',
         "Google Fonts"),
        ('<app-root ng-version="17.0.1"></app-root>', "Angular"),
        ('<div class="w" data-wf-page="abc" data-wf-site="def"></div>', "Webflow"),
    ],
)
def test_script_and_html_evidence(snippet: str, expected: str) -> None:
    found = detect({}, f"<html><head></head><body>{snippet}</body></html>", [])
    assert expected in _names(found)


def test_a_mere_mention_is_not_a_detection() -> None:
    html = "<p>We integrate with Shopify, Stripe, HubSpot and WordPress.</p>"
    assert detect({}, html, []) == []


def test_detections_are_ordered_by_category_then_name() -> None:
    html = ('<meta name="generator" content="WordPress 6">'
            '<script src="https://js.stripe.com/v3/"></script>'
            '<script src="https://www.google-analytics.com/analytics.js"></script>')
    found = detect({"server": "nginx"}, html, [])
    assert [(d.category, d.name) for d in found] == sorted((d.category, d.name) for d in found)


def test_extract_features_tolerates_broken_markup() -> None:
    features = extract_features(
        '<a href="/careers">Careers <b>now</a><script src=/x.js></script><a href="/y">Y'
    )
    assert ("/careers", "Careers now") in features.links
    assert ("/y", "Y") in features.links
    assert "/x.js" in features.script_srcs
