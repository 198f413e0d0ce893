"""The goal vocabulary: industries -> SIC codes, places -> register predicates, sizes."""

from __future__ import annotations

import re

import pytest

from agents import taxonomy
from agents.taxonomy import LocationFilter, UnknownName


def _in(location: str, *, country: str | None = None, postcode: str | None = None,
        post_town: str | None = None, county: str | None = None) -> bool:
    place = taxonomy.lookup_location(location)
    assert place is not None, location
    return place.matches(country=country, postcode=postcode, post_town=post_town,
                         county=county)


# Industries -------------------------------------------------------------------------


def test_the_vocabulary_is_broad_and_well_formed() -> None:
    names = taxonomy.known_industry_names()
    assert len(names) >= 12
    for required in ("SaaS", "Software", "FinTech", "Financial Services", "HealthTech",
                     "E-commerce", "Manufacturing", "Construction", "Professional Services",
                     "Marketing", "Education", "Logistics", "Real Estate", "Hospitality",
                     "Energy", "Biotech"):
        assert required in names
    for industry in taxonomy.INDUSTRIES.values():
        assert industry.sic_codes or industry.divisions, industry.name
        assert all(re.fullmatch(r"\d{5}", code) for code in industry.sic_codes), industry.name
        assert all(re.fullmatch(r"\d{2}", d) for d in industry.divisions), industry.name


@pytest.mark.parametrize("name", ["SaaS", "saas", "SAAS", " SaaS ", "Software as a Service"])
def test_industry_names_are_case_and_punctuation_insensitive(name: str) -> None:
    assert taxonomy.lookup_industry(name).sic_codes == frozenset(
        {"58290", "62011", "62012", "62020", "62090", "63110", "63120"})


@pytest.mark.parametrize(("name", "canonical"), [
    ("E-commerce", "E-commerce"), ("ecommerce", "E-commerce"), ("E Commerce", "E-commerce"),
    ("financial services", "Financial Services"), ("Financial-Services", "Financial Services"),
    ("fintech", "FinTech"), ("Property", "Real Estate"), ("medtech", "HealthTech"),
])
def test_aliases(name: str, canonical: str) -> None:
    assert taxonomy.lookup_industry(name).name == canonical


def test_fintech_is_a_documented_subset_of_financial_services() -> None:
    fintech = taxonomy.lookup_industry("FinTech").sic_codes
    assert fintech < taxonomy.lookup_industry("Financial Services").sic_codes
    # central banking, building societies and holding companies are not fintech
    assert not fintech & {"64110", "64192", "64205", "64209"}


def test_unknown_industry_lists_the_known_ones() -> None:
    with pytest.raises(UnknownName) as caught:
        taxonomy.lookup_industry("Underwater Basket Weaving")
    message = str(caught.value)
    assert "'Underwater Basket Weaving'" in message
    assert "SaaS" in message and "Real Estate" in message and "SIC" in message


def test_a_sic_code_stands_for_itself() -> None:
    assert taxonomy.lookup_industry("47910").sic_codes == frozenset({"47910"})
    with pytest.raises(UnknownName):
        taxonomy.lookup_industry("4791")


def test_industry_filter_matches_codes_and_divisions() -> None:
    both = taxonomy.resolve_industries(["SaaS", "Manufacturing"])
    assert both.matches(["62012"])
    assert both.matches(["99999", "25990"])  # division 25 is manufacturing
    assert not both.matches(["68100"])
    assert not both.matches([])
    assert not both.matches(None)


# Locations --------------------------------------------------------------------------


def test_postcode_areas_partition_the_uk() -> None:
    nations = {name: taxonomy.lookup_location(name) for name in
               ("England", "Scotland", "Wales", "Northern Ireland")}
    areas = [place.postcode_areas for place in nations.values() if place]
    union = frozenset().union(*areas)
    assert sum(len(a) for a in areas) == len(union) == 121  # disjoint, all of them
    uk = taxonomy.lookup_location("UK")
    assert uk is not None and uk.postcode_areas == union
    assert not union & {"GY", "JE", "IM"}  # crown dependencies are not the UK
    regions = ["London", "South East", "East of England", "South West", "West Midlands",
               "East Midlands", "Yorkshire and the Humber", "North West", "North East"]
    england = nations["England"]
    region_areas = [taxonomy.lookup_location(r).postcode_areas for r in regions]  # type: ignore[union-attr]
    assert england is not None
    assert sum(len(a) for a in region_areas) == len(england.postcode_areas)
    assert frozenset().union(*region_areas) == england.postcode_areas


@pytest.mark.parametrize("alias", ["UK", "uk", "United Kingdom", "GB", "gb"])
def test_uk_aliases(alias: str) -> None:
    assert taxonomy.lookup_location(alias) == taxonomy.lookup_location("UK")


def test_region_aliases() -> None:
    assert taxonomy.lookup_location("north-west") == taxonomy.lookup_location("North West")
    assert taxonomy.lookup_location("Yorkshire") == taxonomy.lookup_location(
        "Yorkshire and the Humber")
    assert taxonomy.lookup_location("Leeds") is None  # a post town: the register decides


def test_uk_matches_by_country_or_postcode() -> None:
    assert _in("UK", country="United Kingdom")
    assert _in("UK", country="ENGLAND")
    assert _in("UK", country=None, postcode="BT1 1AA")  # GB, the ISO code, includes NI
    assert _in("GB", country="", postcode="M1 1AE")
    assert not _in("UK", country="IRELAND", postcode="D02 X285")
    assert not _in("UK", country=None, postcode="D02 X285")  # an Eircode is not a UK area
    # a foreign country overrules a postcode that looks British (Toronto's M5V)
    assert not _in("UK", country="CANADA", postcode="M5V 3L9")


def test_great_britain_excludes_northern_ireland() -> None:
    assert _in("Great Britain", postcode="EH1 1YZ")
    assert not _in("Great Britain", postcode="BT1 1AA")


def test_nations_use_the_country_field_first_then_the_postcode() -> None:
    assert _in("Scotland", country="SCOTLAND")
    assert _in("Scotland", country="United Kingdom", postcode="G1 1XQ")
    assert not _in("Scotland", country="ENGLAND", postcode="G1 1XQ")
    # SY straddles the border and counts as English unless the country says Wales
    assert not _in("Wales", postcode="SY23 1DE")
    assert _in("Wales", country="Wales", postcode="SY23 1DE")
    assert _in("England", country="England and Wales", postcode="SY1 1AA")


def test_regions_by_postcode_area() -> None:
    assert _in("London", country="ENGLAND", postcode="EC1V 2NX")
    assert _in("London", country="", postcode="sw1a 1aa")
    assert not _in("London", country="ENGLAND", postcode="M1 1AE")
    assert not _in("London", country="SCOTLAND", postcode="EC1V 2NX")
    assert _in("North West", country="ENGLAND", postcode="M1 1AE")
    assert _in("Midlands", postcode="B1 1AA") and _in("Midlands", postcode="NG1 1AA")


def test_ireland_is_the_republic_by_country() -> None:
    assert _in("Ireland", country="IRELAND", postcode="D02 X285")
    assert _in("Ireland", country="Republic of Ireland")
    assert not _in("Ireland", country="NORTHERN IRELAND", postcode="BT1 1AA")


def test_towns_and_counties_compare_by_place_key() -> None:
    town = taxonomy.town_or_county(taxonomy.place_key("St Albans"), is_town=True,
                                   is_county=False)
    assert town.matches(country=None, postcode=None, post_town="ST. ALBANS", county=None)
    assert not town.matches(country=None, postcode=None, post_town=None, county="ST ALBANS")
    union = town | taxonomy.town_or_county("KENT", is_town=False, is_county=True)
    assert union.matches(country=None, postcode=None, post_town="MAIDSTONE", county="Kent")


def test_filters_combine_by_union() -> None:
    london = taxonomy.lookup_location("London")
    scotland = taxonomy.lookup_location("Scotland")
    assert london is not None and scotland is not None
    both = london | scotland
    assert both.matches(country=None, postcode="EC1V 2NX", post_town=None, county=None)
    assert both.matches(country="SCOTLAND", postcode=None, post_town=None, county=None)
    assert LocationFilter() | both == both


@pytest.mark.parametrize("name", ["Leeds", "Stoke-on-Trent", "St. Albans", "Ynys Môn",
                                  "Newcastle upon Tyne", "London"])
def test_plausible_place_names_pass_validation(name: str) -> None:
    assert taxonomy.check_place_name(name) == name


@pytest.mark.parametrize("name", ["", "   ", "12345", "<script>", "a" * 200, "--"])
def test_implausible_place_names_are_refused_listing_the_known_places(name: str) -> None:
    with pytest.raises(UnknownName, match="Northern Ireland"):
        taxonomy.check_place_name(name)


def test_postcode_area() -> None:
    assert taxonomy.postcode_area("EC1V 2NX") == "EC"
    assert taxonomy.postcode_area(" m1 1aa") == "M"
    assert taxonomy.postcode_area("D02 X285") == "D"
    assert taxonomy.postcode_area("10001") is None
    assert taxonomy.postcode_area(None) is None


# Company size -----------------------------------------------------------------------


@pytest.mark.parametrize(("category", "estimate"), [
    ("MICRO ENTITY", 5), ("TOTAL EXEMPTION FULL", 10), ("UNAUDITED ABRIDGED", 10),
    ("SMALL", 25), (" small ", 25), ("MEDIUM", 120), ("FULL", 300), ("GROUP", 500),
    ("AUDIT EXEMPTION SUBSIDIARY", 50), ("DORMANT", 0),
    ("NO ACCOUNTS FILED", None), ("ACCOUNTS TYPE NOT AVAILABLE", None), ("", None),
    (None, None),
])
def test_employee_estimate_from_the_accounts_category(
    category: str | None, estimate: int | None
) -> None:
    assert taxonomy.employee_estimate(category) == estimate


def test_an_observed_headcount_beats_the_category() -> None:
    assert taxonomy.employee_estimate("MICRO ENTITY", 42) == 42
    assert taxonomy.employee_estimate("GROUP", 0) == 0
    assert taxonomy.employee_estimate("NO ACCOUNTS FILED", 7) == 7


def test_size_bands_follow_the_companies_act_thresholds() -> None:
    for name, band in taxonomy.SIZE_BANDS.items():
        assert band.low <= band.estimate, name
        assert band.high is None or band.estimate <= band.high, name
    assert taxonomy.SIZE_BANDS["MICRO ENTITY"].high == 10
    assert taxonomy.SIZE_BANDS["SMALL"].high == 50
    assert taxonomy.SIZE_BANDS["MEDIUM"].high == 250
    assert taxonomy.SIZE_BANDS["FULL"].low == 250
