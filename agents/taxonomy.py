"""What the words in a stream's goal mean in Companies House data.

Three vocabularies, all pure data plus small lookups (no SQL, no I/O):

* **Industries** -> SIC 2007 codes. A goal says ``industry: ["SaaS", "FinTech"]``; a
  company's register entry has up to four 5-digit SIC codes. Each industry is a set of
  exact codes, plus whole SIC *divisions* (the first two digits) for broad sectors
  such as Manufacturing (divisions 10-33), where listing every code would add nothing.
  A 5-digit code given as an industry name (``"62012"``) matches itself.
* **Locations** -> predicates on the registered office: country, postcode area,
  post town, county. See :class:`LocationFilter` for the exact rule.
* **Company size** -> an employee estimate. The bulk register has no headcount, but
  the accounts category a company files under is bounded by the Companies Act 2006
  size thresholds, so it brackets the headcount. See :data:`SIZE_BANDS`.

Names are matched case-insensitively and ignoring spaces and punctuation, so
``"E-commerce"``, ``"ecommerce"`` and ``"E Commerce"`` are the same industry. Unknown
names raise :class:`UnknownName` (a ``ValueError``, so pydantic validators can raise it
as is) whose message lists the known ones.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "INDUSTRIES",
    "LOCATIONS",
    "SIZE_BANDS",
    "UK_GENERIC_COUNTRIES",
    "UNFILED_ACCOUNT_CATEGORIES",
    "Industry",
    "IndustryFilter",
    "LocationFilter",
    "SizeBand",
    "UnknownName",
    "category_estimate",
    "category_key",
    "check_place_name",
    "employee_estimate",
    "known_industry_names",
    "known_location_names",
    "lookup_industry",
    "lookup_location",
    "name_key",
    "place_key",
    "postcode_area",
    "resolve_industries",
    "town_or_county",
    "unknown_location",
]


class UnknownName(ValueError):
    """An industry or location name the taxonomy does not know."""


def name_key(name: str) -> str:
    """The lookup key of an industry or region name: lower case, letters and digits."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def place_key(text: str | None) -> str:
    """The comparison key of a country, post town or county, on either side (goal or
    register): upper case, letters and digits only, so ``"St. Albans"`` equals
    ``"ST ALBANS"``. The SQL twin is ``regexp_replace(upper(x), '[^A-Z0-9]', '', 'g')``
    (see agents/store/streams.py); keep the two identical.
    """
    return re.sub(r"[^A-Z0-9]", "", (text or "").upper())


def postcode_area(postcode: str | None) -> str | None:
    """The postcode area: the one or two leading letters (``"EC1V 2NX"`` -> ``"EC"``,
    ``"M1 1AA"`` -> ``"M"``). ``None`` when the postcode does not start with a letter.
    SQL twin: ``substring(upper(btrim(postcode)) FROM '^[A-Z]{1,2}')``."""
    match = re.match(r"[A-Z]{1,2}", (postcode or "").strip(" ").upper())
    return match.group(0) if match else None


# --- Industries ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Industry:
    name: str
    #: exact 5-digit SIC 2007 codes
    sic_codes: frozenset[str]
    #: whole SIC divisions (2-digit prefixes), for sectors defined by division
    divisions: frozenset[str] = frozenset()
    #: why these codes, where the choice is not obvious
    note: str = ""


def _industry(
    name: str, codes: str = "", divisions: str = "", note: str = ""
) -> Industry:
    return Industry(name, frozenset(codes.split()), frozenset(divisions.split()), note)


_SOFTWARE = "58210 58290 62011 62012 62020 62030 62090"
_FINTECH = "64191 64921 64929 64999 66110 66120 66190 66300"

# Canonical industries. Codes are SIC 2007 as used by Companies House (UK extension,
# 5 digits). Where two industries overlap (SaaS and Software) that is deliberate: a
# goal names what the user means, and the codes say what the register can tell apart.
_INDUSTRY_LIST: tuple[Industry, ...] = (
    _industry("SaaS", "58290 62011 62012 62020 62090 63110 63120",
              note="software publishing and development, IT services, hosting (63110) "
                   "and web portals (63120): where software-as-a-service firms register"),
    _industry("Software", _SOFTWARE,
              note="software publishing (5821x/58290) and computer programming and "
                   "consultancy (division 62)"),
    _industry("IT Services", "62020 62030 62090 63110",
              note="IT consultancy, facilities management, other IT services, hosting"),
    _industry("Technology", _SOFTWARE + " 63110 63120 61100 61200 61300 61900 "
                            "26110 26120 26200",
              note="software and IT, telecoms (division 61), electronic components, "
                   "boards and computers (26110, 26120, 26200)"),
    _industry("Telecommunications", "61100 61200 61300 61900"),
    _industry("FinTech", _FINTECH,
              note="the financial activities fintech firms register under: banks "
                   "(64191, challenger banks), non-bank and other credit (64921, 64929), "
                   "payments and e-money (64999), exchanges and trading (66110, 66120), "
                   "payment processing and open banking (66190), robo-advice (66300). "
                   "Central banking, building societies and holding companies are not "
                   "fintech and are left out"),
    _industry("Financial Services",
              _FINTECH + " 64110 64192 64205 64301 64302 64303 64304 64305 64306 64910 "
                         "64922 64991 64992",
              note="divisions 64 and 66 without insurance (its own industry) and without "
                   "64209 'other holding companies', which is a shell category"),
    _industry("Insurance", "65110 65120 65201 65202 65300 66210 66220 66290"),
    _industry("HealthTech", "26600 32500 86900",
              note="electromedical equipment (26600), medical and dental instruments "
                   "(32500) and other human health activities (86900), where digital "
                   "health services register"),
    _industry("Healthcare", divisions="86 87 88",
              note="human health (86), residential care (87), social work (88)"),
    _industry("Biotech", "21100 21200 72110",
              note="pharmaceutical products and preparations, biotechnology R&D"),
    _industry("E-commerce", "47910",
              note="retail sale via mail order houses or via the Internet; online shops "
                   "have no other code of their own"),
    _industry("Retail", divisions="47"),
    _industry("Wholesale", divisions="46"),
    _industry("Manufacturing", divisions=" ".join(str(d) for d in range(10, 34)),
              note="section C: divisions 10 to 33"),
    _industry("Food and Drink", divisions="10 11",
              note="manufacture of food products and beverages"),
    _industry("Automotive",
              "29100 29201 29202 29203 29310 29320 45111 45112 45190 45200 45310 45320 "
              "45400",
              note="vehicle and parts manufacture (division 29) and motor trade (45)"),
    _industry("Construction", divisions="41 42 43", note="section F"),
    _industry("Professional Services",
              "69101 69102 69109 69201 69202 69203 70210 70221 70229 71111 71112 71121 "
              "71122 71129 71200 74901 74902 74909",
              note="legal, accounting, PR, management consultancy, architecture, "
                   "engineering, testing, surveying and other professional activities"),
    _industry("Legal", "69101 69102 69109"),
    _industry("Accounting", "69201 69202 69203"),
    _industry("Consulting", "70221 70229", note="management consultancy"),
    _industry("Marketing", "70210 73110 73120 73200",
              note="PR, advertising agencies, media representation, market research"),
    _industry("Media",
              "58110 58120 58130 58141 58142 58190 59111 59112 59113 59120 59131 59132 "
              "59133 59140 59200 60100 60200 63910",
              note="publishing, film, TV, music, broadcasting, news agencies"),
    _industry("Education", divisions="85", note="section P"),
    _industry("Logistics",
              "49200 49410 49420 50200 50400 51210 52101 52102 52103 52211 52241 52242 "
              "52243 52290 53100 53201 53202",
              note="freight by rail, road, sea and air, removals, warehousing, cargo "
                   "handling, forwarding (52290), post and couriers; passenger "
                   "transport is left out"),
    _industry("Real Estate", divisions="68", note="section L"),
    _industry("Hospitality", divisions="55 56", note="accommodation and food service"),
    _industry("Energy",
              "06100 06200 09100 19201 19209 35110 35120 35130 35140 35210 35220 35230 "
              "35300",
              note="oil and gas extraction and support, refining, and section D "
                   "(electricity, gas, steam)"),
    _industry("Agriculture", divisions="01 02 03", note="section A"),
    _industry("Recruitment", "78109 78200 78300",
              note="placement agencies, temporary employment, HR provision (78101 is "
                   "film casting and is left out)"),
)

_INDUSTRY_ALIASES: Mapping[str, str] = {
    "softwareasaservice": "SaaS",
    "it": "IT Services",
    "tech": "Technology",
    "telecoms": "Telecommunications",
    "telecom": "Telecommunications",
    "financialtechnology": "FinTech",
    "finance": "Financial Services",
    "insurtech": "Insurance",
    "medtech": "HealthTech",
    "digitalhealth": "HealthTech",
    "health": "Healthcare",
    "biotechnology": "Biotech",
    "lifesciences": "Biotech",
    "pharma": "Biotech",
    "pharmaceuticals": "Biotech",
    "ecom": "E-commerce",
    "onlineretail": "E-commerce",
    "foodanddrinks": "Food and Drink",
    "foodandbeverage": "Food and Drink",
    "accountancy": "Accounting",
    "managementconsulting": "Consulting",
    "consultancy": "Consulting",
    "advertising": "Marketing",
    "transport": "Logistics",
    "freight": "Logistics",
    "property": "Real Estate",
    "hotelsandrestaurants": "Hospitality",
    "utilities": "Energy",
    "farming": "Agriculture",
    "staffing": "Recruitment",
}

INDUSTRIES: Mapping[str, Industry] = {name_key(i.name): i for i in _INDUSTRY_LIST}

_SIC_CODE = re.compile(r"^\d{5}$")


def known_industry_names() -> list[str]:
    return [industry.name for industry in _INDUSTRY_LIST]


def lookup_industry(name: str) -> Industry:
    """The industry called ``name`` (or a 5-digit SIC code standing for itself)."""
    text = name.strip()
    if _SIC_CODE.match(text):
        return Industry(text, frozenset({text}))
    key = name_key(text)
    alias = _INDUSTRY_ALIASES.get(key)
    industry = INDUSTRIES.get(name_key(alias) if alias else key)
    if industry is None:
        raise UnknownName(
            f"unknown industry {name!r}; known industries: "
            f"{', '.join(known_industry_names())} (or a 5-digit SIC 2007 code)"
        )
    return industry


@dataclasses.dataclass(frozen=True, slots=True)
class IndustryFilter:
    """A company is in the industry when one of its SIC codes is in ``sic_codes`` or
    starts with one of ``divisions``."""

    sic_codes: frozenset[str]
    divisions: frozenset[str]

    def matches(self, company_sic_codes: Iterable[str] | None) -> bool:
        return any(
            code in self.sic_codes or code[:2] in self.divisions
            for code in company_sic_codes or ()
        )


def resolve_industries(names: Sequence[str]) -> IndustryFilter:
    """The union of the named industries (raises :class:`UnknownName`)."""
    industries = [lookup_industry(name) for name in names]
    return IndustryFilter(
        frozenset().union(*(i.sic_codes for i in industries)),
        frozenset().union(*(i.divisions for i in industries)),
    )


# --- Locations ----------------------------------------------------------------------

# Country names as the register spells them, as place keys. "Generic" ones say only
# "somewhere in the UK", so for those the postcode decides where the company is.
UK_GENERIC_COUNTRIES: frozenset[str] = frozenset({
    "UNITEDKINGDOM", "UK", "GB", "GREATBRITAIN", "BRITAIN", "ENGLANDANDWALES",
    "ENGLANDWALES",
})
_ENGLAND_NAMES = frozenset({"ENGLAND"})
_WALES_NAMES = frozenset({"WALES", "CYMRU"})
_SCOTLAND_NAMES = frozenset({"SCOTLAND"})
_NI_NAMES = frozenset({"NORTHERNIRELAND"})
_IRELAND_NAMES = frozenset({"IRELAND", "REPUBLICOFIRELAND", "EIRE", "IRISHREPUBLIC"})

# Postcode areas by nation. Five areas straddle a border; each is counted where most
# of its postcodes are: CH (Chester, with Deeside), HR (Hereford) and SY (Shrewsbury,
# with much of mid-Wales) in England, LD (Llandrindod Wells) in Wales, TD (Galashiels,
# with Berwick-upon-Tweed) in Scotland. A company whose country field names its nation
# is placed by that field instead, so the border cases only matter when it is blank
# or just says "United Kingdom".
_SCOTLAND_AREAS = frozenset(
    "AB DD DG EH FK G HS IV KA KW KY ML PA PH TD ZE".split())
_WALES_AREAS = frozenset("CF LD LL NP SA".split())
_NI_AREAS = frozenset({"BT"})
# England by ITL1 region (the former government office regions). Areas that straddle
# two regions are counted in the one holding most of their postcodes.
_ENGLAND_REGIONS: Mapping[str, frozenset[str]] = {
    # The London postal district plus the outer areas lying mostly in Greater London.
    "London": frozenset("E EC N NW SE SW W WC BR CR EN HA IG RM SM TW UB".split()),
    "South East": frozenset("BN CT DA GU HP KT ME MK OX PO RG RH SL SO TN".split()),
    "East of England": frozenset("AL CB CM CO IP LU NR PE SG SS WD".split()),
    "South West": frozenset("BA BH BS DT EX GL PL SN SP TA TQ TR".split()),
    "West Midlands": frozenset("B CV DY HR ST SY TF WR WS WV".split()),
    "East Midlands": frozenset("DE LE LN NG NN".split()),
    "Yorkshire and the Humber": frozenset("BD DN HD HG HU HX LS S WF YO".split()),
    "North West": frozenset("BB BL CA CH CW FY L LA M OL PR SK WA WN".split()),
    "North East": frozenset("DH DL NE SR TS".split()),
}
_ENGLAND_AREAS = frozenset().union(*_ENGLAND_REGIONS.values())
_UK_AREAS = _ENGLAND_AREAS | _SCOTLAND_AREAS | _WALES_AREAS | _NI_AREAS


@dataclasses.dataclass(frozen=True, slots=True)
class LocationFilter:
    """Where a company's registered office must be. With its fields as place keys, a
    company matches when any of these holds:

    1. its country is one of ``countries`` (the country names a matching nation);
    2. its country is blank, generic (``UNITED KINGDOM``, ``GB``, ``ENGLAND AND WALES``
       ...) or one of ``postcode_countries``, and its postcode area is in
       ``postcode_areas`` (the postcode places a company the country field leaves
       vague, and a country naming another nation overrules the postcode);
    3. its post town is one of ``post_towns``;
    4. its county is one of ``counties``.

    Several locations combine by union, field by field. That is exact for the usual
    goals (a list of nations, or of regions and towns) and only differs from matching
    each location separately for records whose country contradicts their postcode.
    """

    countries: frozenset[str] = frozenset()
    postcode_countries: frozenset[str] = frozenset()
    postcode_areas: frozenset[str] = frozenset()
    post_towns: frozenset[str] = frozenset()
    counties: frozenset[str] = frozenset()

    def __or__(self, other: LocationFilter) -> LocationFilter:
        return LocationFilter(
            self.countries | other.countries,
            self.postcode_countries | other.postcode_countries,
            self.postcode_areas | other.postcode_areas,
            self.post_towns | other.post_towns,
            self.counties | other.counties,
        )

    def matches(
        self, *, country: str | None, postcode: str | None, post_town: str | None,
        county: str | None,
    ) -> bool:
        country_key = place_key(country)
        if country_key in self.countries:
            return True
        if country_key == "" or country_key in UK_GENERIC_COUNTRIES \
                or country_key in self.postcode_countries:
            area = postcode_area(postcode)
            if area is not None and area in self.postcode_areas:
                return True
        return place_key(post_town) in self.post_towns or place_key(county) in self.counties


def _nation(names: frozenset[str], areas: frozenset[str]) -> LocationFilter:
    return LocationFilter(countries=names, postcode_countries=names, postcode_areas=areas)


def _region(areas: frozenset[str]) -> LocationFilter:
    return LocationFilter(postcode_countries=_ENGLAND_NAMES, postcode_areas=areas)


_UK = _nation(
    UK_GENERIC_COUNTRIES | _ENGLAND_NAMES | _WALES_NAMES | _SCOTLAND_NAMES | _NI_NAMES,
    _UK_AREAS,
)
_GREAT_BRITAIN = _nation(
    frozenset({"GREATBRITAIN", "BRITAIN", "ENGLANDANDWALES", "ENGLANDWALES"})
    | _ENGLAND_NAMES | _WALES_NAMES | _SCOTLAND_NAMES,
    _ENGLAND_AREAS | _WALES_AREAS | _SCOTLAND_AREAS,
)

# Named locations: (display name, aliases, filter). "GB" is the ISO 3166 code of the
# whole United Kingdom, so it means the UK (Northern Ireland included); "Great Britain"
# means England, Scotland and Wales. "Ireland" is the Republic of Ireland, which has no
# UK postcode areas, so only the country field can place a company there.
_LOCATION_LIST: tuple[tuple[str, tuple[str, ...], LocationFilter], ...] = (
    ("UK", ("United Kingdom", "GB"), _UK),
    ("Great Britain", ("Britain",), _GREAT_BRITAIN),
    ("England", (), _nation(_ENGLAND_NAMES, _ENGLAND_AREAS)),
    ("Scotland", (), _nation(_SCOTLAND_NAMES, _SCOTLAND_AREAS)),
    ("Wales", ("Cymru",), _nation(_WALES_NAMES, _WALES_AREAS)),
    ("Northern Ireland", ("NI",), _nation(_NI_NAMES, _NI_AREAS)),
    ("Ireland", ("Republic of Ireland", "Eire", "ROI"),
     LocationFilter(countries=_IRELAND_NAMES)),
    ("London", ("Greater London",), _region(_ENGLAND_REGIONS["London"])),
    ("South East", (), _region(_ENGLAND_REGIONS["South East"])),
    ("East of England", ("East", "Eastern"), _region(_ENGLAND_REGIONS["East of England"])),
    ("South West", (), _region(_ENGLAND_REGIONS["South West"])),
    ("West Midlands", (), _region(_ENGLAND_REGIONS["West Midlands"])),
    ("East Midlands", (), _region(_ENGLAND_REGIONS["East Midlands"])),
    ("Midlands", (), _region(_ENGLAND_REGIONS["West Midlands"]
                             | _ENGLAND_REGIONS["East Midlands"])),
    ("Yorkshire and the Humber", ("Yorkshire", "Yorkshire and Humber"),
     _region(_ENGLAND_REGIONS["Yorkshire and the Humber"])),
    ("North West", (), _region(_ENGLAND_REGIONS["North West"])),
    ("North East", (), _region(_ENGLAND_REGIONS["North East"])),
)

LOCATIONS: Mapping[str, LocationFilter] = {
    name_key(alias): location
    for name, aliases, location in _LOCATION_LIST
    for alias in (name, *aliases)
}


def known_location_names() -> list[str]:
    return [name for name, _, _ in _LOCATION_LIST]


def lookup_location(name: str) -> LocationFilter | None:
    """The named country or region, or ``None``: the name may still be a post town or
    county, which only the companies table can tell (``agents/store/streams.py``)."""
    return LOCATIONS.get(name_key(name))


def town_or_county(key: str, *, is_town: bool, is_county: bool) -> LocationFilter:
    """The filter for a place key found in the register as a post town and/or county."""
    return LocationFilter(
        post_towns=frozenset({key}) if is_town else frozenset(),
        counties=frozenset({key}) if is_county else frozenset(),
    )


def unknown_location(name: str) -> UnknownName:
    return UnknownName(
        f"unknown location {name!r}: not a known country or region "
        f"({', '.join(known_location_names())}) and no company in the companies table "
        "has it as its post town or county"
    )


# A place name as a person would type it: starts with a letter, then letters, digits,
# spaces and the punctuation of names like "Stoke-on-Trent" or "St. Albans".
_PLACE_NAME = re.compile(r"^[^\W\d_][\w .,'&()/-]{0,79}$")


def check_place_name(name: str) -> str:
    """``name`` if it is a known location or could be a post town or county (checked
    against the register when the agent runs); :class:`UnknownName` otherwise."""
    text = name.strip()
    if lookup_location(text) is None and (not _PLACE_NAME.match(text) or not place_key(text)):
        raise UnknownName(
            f"invalid location {name!r}: expected a country or region "
            f"({', '.join(known_location_names())}) or a post town or county name"
        )
    return text


# --- Company size -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SizeBand:
    """The headcount an accounts category implies: ``low``-``high`` employees
    (``high`` None: no upper bound), and the single ``estimate`` used for filtering."""

    low: int
    high: int | None
    estimate: int
    reason: str


# The Companies Act 2006 size thresholds bound the average number of employees: a
# micro-entity has at most 10 (s.384A), a small company at most 50 (s.382), a medium
# one at most 250 (s.465); above that a company is large and files full accounts. The
# estimate is where most filers of a category sit, not the middle of its range.
SIZE_BANDS: Mapping[str, SizeBand] = {
    "MICRO ENTITY": SizeBand(0, 10, 5, "micro-entity regime: at most 10 employees"),
    "TOTAL EXEMPTION FULL": SizeBand(
        1, 50, 10, "small-company audit exemption: at most 50 employees, most filers "
                   "near the bottom of the range"),
    "TOTAL EXEMPTION SMALL": SizeBand(
        1, 50, 10, "small-company audit exemption (pre-2016 name)"),
    "UNAUDITED ABRIDGED": SizeBand(
        1, 50, 10, "abridged accounts are for small companies; unaudited ones are the "
                   "smaller of them"),
    "AUDITED ABRIDGED": SizeBand(
        10, 50, 25, "small company whose abridged accounts are audited"),
    "SMALL": SizeBand(10, 50, 25, "small-company regime: 10 to 50 employees"),
    "MEDIUM": SizeBand(50, 250, 120, "medium-sized company: 50 to 250 employees"),
    "FULL": SizeBand(250, None, 300, "full accounts: a large company (over 250 "
                                     "employees) in the main"),
    "GROUP": SizeBand(250, None, 500, "consolidated group accounts: a parent of a "
                                      "group, usually large"),
    "AUDIT EXEMPTION SUBSIDIARY": SizeBand(
        10, 250, 50, "subsidiary exempt from audit under a parent guarantee (s.479A); "
                     "its own size is unknown, usually small to medium"),
    "FILING EXEMPTION SUBSIDIARY": SizeBand(
        10, 250, 50, "dormant-subsidiary-style filing exemption (s.448A); as above"),
    "DORMANT": SizeBand(0, 0, 0, "dormant: no trading, no staff"),
}

#: Categories that mean no accounts are on file; every other non-blank one is filed.
#: ("NO ACCOUNTS FILED", "ACCOUNTS TYPE NOT AVAILABLE", "INITIAL" and blanks give no
#: size estimate at all.)
UNFILED_ACCOUNT_CATEGORIES: frozenset[str] = frozenset({
    "NO ACCOUNTS FILED", "ACCOUNTS TYPE NOT AVAILABLE",
})


def category_key(accounts_category: str | None) -> str:
    """How accounts categories are compared: trimmed, upper case (SQL twin:
    ``upper(btrim(accounts_category))``, which trims spaces only)."""
    return (accounts_category or "").strip(" ").upper()


def category_estimate(accounts_category: str | None) -> int | None:
    band = SIZE_BANDS.get(category_key(accounts_category))
    return None if band is None else band.estimate


def employee_estimate(
    accounts_category: str | None, enriched_estimate: int | None = None
) -> int | None:
    """The company's estimated headcount: the enrichment agent's figure when it found
    one (observed beats inferred), else the accounts-category estimate, else ``None``
    (unknown: no accounts filed yet, or a category that says nothing about size)."""
    if enriched_estimate is not None:
        return enriched_estimate
    return category_estimate(accounts_category)
