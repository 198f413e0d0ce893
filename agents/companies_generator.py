#!/usr/bin/env python3
"""Write a synthetic Companies House "BasicCompanyData" CSV of any size.

The output copies the real free bulk product's shape, because the importer and the
tests must work on the real file without surprises:

* the header line is byte-for-byte the real one, leading spaces included
  (`` CompanyNumber``, `` RegAddress.AddressLine2``, ...);
* every field is quoted, empty ones as ``""``; lines end with CRLF;
* dates are DD/MM/YYYY, company names are upper case, ``AccountRefDay`` is unpadded;
* company numbers are 8 characters, with the register's prefixes (``SC``, ``NI``,
  ``OC``, ``FC``, ...) matching the company's category and country.

Output is deterministic for a given ``--seed`` (dates are computed from ``--as-of``,
never from today's date) and streamed row by row, so memory stays flat at any size.

``--bad-rows K`` adds K malformed rows (a bad date, a missing company number, a wrong
column count) on top of the ``--rows`` good ones; their line numbers and kinds are
printed on stderr so that tests can check the importer's reject report.

:func:`filing_history` gives a company of such a file a filing history in the shape
of the Companies House API's ``GET /company/{number}/filing-history`` items (the demo
serves its companies' histories from it).

Usage: scripts/generate_companies.py --rows 1000000 --seed 7 --out companies.csv
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import sys
import time
from bisect import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from random import Random
from typing import Any, TextIO

from agents.companies_import import CSV_COLUMNS

# The real header, as the files from Companies House spell it: the importer's column
# names, with the leading space the real files put in front of some of them.
_SPACED_IN_REAL_FILES = frozenset({
    "CompanyNumber",
    "RegAddress.AddressLine2",
    "PreviousName_1.CompanyName",
    "PreviousName_2.CONDATE",
    "PreviousName_2.CompanyName",
    "PreviousName_3.CompanyName",
    "PreviousName_4.CompanyName",
    "PreviousName_5.CompanyName",
    "PreviousName_6.CompanyName",
    "PreviousName_7.CompanyName",
    "PreviousName_8.CompanyName",
    "PreviousName_9.CompanyName",
    "PreviousName_10.CompanyName",
    "ConfStmtLastMadeUpDate",
})
HEADER: tuple[str, ...] = tuple(
    f" {name}" if name in _SPACED_IN_REAL_FILES else name for name in CSV_COLUMNS
)

URI_PREFIX = "http://business.data.gov.uk/id/company/"

# --- reference data ----------------------------------------------------------------
# (post town, county, country, outward postcodes). County is blank where Companies
# House data usually leaves it blank (London, many cities).
ENGLAND, WALES, SCOTLAND, NI, IRELAND = (
    "ENGLAND", "WALES", "SCOTLAND", "NORTHERN IRELAND", "IRELAND")
TOWNS: tuple[tuple[str, str, str, tuple[str, ...], float], ...] = (
    ("LONDON", "", ENGLAND, ("EC1V", "EC2A", "EC1A", "WC2H", "WC1X", "W1W", "W1F", "SW1A",
                            "SE1", "E1", "E14", "N1", "NW1", "SW19", "W6", "E2"), 22.0),
    ("MANCHESTER", "GREATER MANCHESTER", ENGLAND, ("M1", "M2", "M3", "M4", "M15", "M20"), 4.0),
    ("BIRMINGHAM", "WEST MIDLANDS", ENGLAND, ("B1", "B2", "B3", "B5", "B15", "B90"), 4.0),
    ("LEEDS", "WEST YORKSHIRE", ENGLAND, ("LS1", "LS2", "LS11", "LS6"), 2.5),
    ("SHEFFIELD", "SOUTH YORKSHIRE", ENGLAND, ("S1", "S2", "S3", "S9", "S11"), 1.5),
    ("BRISTOL", "", ENGLAND, ("BS1", "BS2", "BS8", "BS16", "BS32"), 2.0),
    ("LIVERPOOL", "MERSEYSIDE", ENGLAND, ("L1", "L2", "L3", "L18"), 1.5),
    ("NEWCASTLE UPON TYNE", "TYNE AND WEAR", ENGLAND, ("NE1", "NE2", "NE6"), 1.2),
    ("NOTTINGHAM", "NOTTINGHAMSHIRE", ENGLAND, ("NG1", "NG2", "NG5", "NG7"), 1.3),
    ("LEICESTER", "LEICESTERSHIRE", ENGLAND, ("LE1", "LE2", "LE4"), 1.1),
    ("CAMBRIDGE", "CAMBRIDGESHIRE", ENGLAND, ("CB1", "CB2", "CB4", "CB22"), 1.0),
    ("OXFORD", "OXFORDSHIRE", ENGLAND, ("OX1", "OX2", "OX4"), 0.8),
    ("READING", "BERKSHIRE", ENGLAND, ("RG1", "RG2", "RG6", "RG30"), 1.0),
    ("BRIGHTON", "EAST SUSSEX", ENGLAND, ("BN1", "BN2", "BN3"), 0.9),
    ("SOUTHAMPTON", "HAMPSHIRE", ENGLAND, ("SO14", "SO15", "SO16"), 0.8),
    ("MILTON KEYNES", "BUCKINGHAMSHIRE", ENGLAND, ("MK9", "MK10", "MK14"), 0.8),
    ("GUILDFORD", "SURREY", ENGLAND, ("GU1", "GU2", "GU4"), 0.6),
    ("EXETER", "DEVON", ENGLAND, ("EX1", "EX2", "EX4"), 0.5),
    ("NORWICH", "NORFOLK", ENGLAND, ("NR1", "NR2", "NR3"), 0.6),
    ("YORK", "NORTH YORKSHIRE", ENGLAND, ("YO1", "YO10", "YO30"), 0.5),
    ("COVENTRY", "WEST MIDLANDS", ENGLAND, ("CV1", "CV3", "CV4"), 0.6),
    ("CHELMSFORD", "ESSEX", ENGLAND, ("CM1", "CM2"), 0.6),
    ("ST. ALBANS", "HERTFORDSHIRE", ENGLAND, ("AL1", "AL3"), 0.5),
    ("MAIDSTONE", "KENT", ENGLAND, ("ME14", "ME15", "ME16"), 0.5),
    ("PRESTON", "LANCASHIRE", ENGLAND, ("PR1", "PR2"), 0.5),
    ("DERBY", "DERBYSHIRE", ENGLAND, ("DE1", "DE21", "DE24"), 0.5),
    ("STOKE-ON-TRENT", "STAFFORDSHIRE", ENGLAND, ("ST1", "ST4"), 0.4),
    ("CHELTENHAM", "GLOUCESTERSHIRE", ENGLAND, ("GL50", "GL51", "GL52"), 0.4),
    ("IPSWICH", "SUFFOLK", ENGLAND, ("IP1", "IP3", "IP4"), 0.4),
    ("NORTHAMPTON", "NORTHAMPTONSHIRE", ENGLAND, ("NN1", "NN4"), 0.5),
    ("WATFORD", "HERTFORDSHIRE", ENGLAND, ("WD17", "WD18", "WD24"), 0.5),
    ("BATH", "SOMERSET", ENGLAND, ("BA1", "BA2"), 0.3),
    ("CARDIFF", "SOUTH GLAMORGAN", WALES, ("CF10", "CF11", "CF14", "CF24"), 1.4),
    ("SWANSEA", "WEST GLAMORGAN", WALES, ("SA1", "SA2", "SA6"), 0.6),
    ("NEWPORT", "GWENT", WALES, ("NP10", "NP19", "NP20"), 0.4),
    ("WREXHAM", "CLWYD", WALES, ("LL11", "LL12", "LL13"), 0.3),
    ("EDINBURGH", "MIDLOTHIAN", SCOTLAND, ("EH1", "EH2", "EH3", "EH6", "EH12"), 2.0),
    ("GLASGOW", "LANARKSHIRE", SCOTLAND, ("G1", "G2", "G3", "G41", "G51"), 2.2),
    ("ABERDEEN", "ABERDEENSHIRE", SCOTLAND, ("AB10", "AB11", "AB25"), 0.8),
    ("DUNDEE", "ANGUS", SCOTLAND, ("DD1", "DD2", "DD4"), 0.4),
    ("INVERNESS", "INVERNESS-SHIRE", SCOTLAND, ("IV1", "IV2", "IV3"), 0.3),
    ("BELFAST", "COUNTY ANTRIM", NI, ("BT1", "BT2", "BT3", "BT7", "BT9"), 1.2),
    ("LONDONDERRY", "COUNTY LONDONDERRY", NI, ("BT47", "BT48"), 0.3),
    ("NEWRY", "COUNTY DOWN", NI, ("BT34", "BT35"), 0.2),
    ("DUBLIN 2", "DUBLIN", IRELAND, ("D02",), 0.5),
    ("DUBLIN 4", "DUBLIN", IRELAND, ("D04",), 0.3),
    ("CORK", "CO. CORK", IRELAND, ("T12", "T23"), 0.2),
    ("GALWAY", "CO. GALWAY", IRELAND, ("H91",), 0.1),
)

STREETS = (
    "HIGH STREET", "STATION ROAD", "CHURCH STREET", "MARKET STREET", "KING STREET",
    "QUEEN STREET", "VICTORIA ROAD", "PARK LANE", "MILL LANE", "BRIDGE STREET",
    "CITY ROAD", "OLD STREET", "LONDON ROAD", "NEW ROAD", "GEORGE STREET",
    "WELLINGTON ROAD", "YORK ROAD", "CHAPEL STREET", "NORTH STREET", "CASTLE STREET",
)
BUILDINGS = (
    "", "", "", "", "UNIT 4", "SUITE 2", "FIRST FLOOR", "GROUND FLOOR", "SECOND FLOOR",
    "OFFICE 12", "THE OLD BAKERY", "KEMP HOUSE", "CHARTER HOUSE", "REGENT HOUSE",
    "UNIT 15 SPEEDWAY COURT", "THE LEADENHALL BUILDING", "CENTURY HOUSE",
)
LOCALITIES = ("", "", "", "", "", "", "BUSINESS PARK", "INDUSTRIAL ESTATE", "TOWN CENTRE",
              "ENTERPRISE PARK", "SCIENCE PARK", "TRADING ESTATE", "OLD TOWN")
CARE_OF = ("", "PRIMROSE ACCOUNTANTS LTD", "TAYLOR ASSOCIATES", "A PATEL", "BDO LLP")

# Sectors: (weight, [(sic text, relative weight)], words used in names).
SECTORS: tuple[tuple[float, tuple[str, ...], tuple[str, ...]], ...] = (
    (13.0, (
        "62012 - Business and domestic software development",
        "62020 - Information technology consultancy activities",
        "62090 - Other information technology service activities",
        "63110 - Data processing, hosting and related activities",
        "63120 - Web portals",
        "58290 - Other software publishing",
        "62011 - Ready-made interactive leisure and entertainment software development",
        "58210 - Publishing of computer games",
        "61900 - Other telecommunications activities",
    ), ("SOFTWARE", "DIGITAL", "TECHNOLOGIES", "ANALYTICS", "SYSTEMS", "LABS", "CLOUD",
        "DATA", "TECH", "AI", "SOLUTIONS", "NETWORKS", "APPS")),
    (4.0, (
        "64999 - Financial intermediation not elsewhere classified",
        "66190 - Activities auxiliary to financial intermediation n.e.c.",
        "64191 - Banks",
        "66300 - Fund management activities",
        "64921 - Credit granting by non-deposit taking finance houses and other specialist "
        "consumer credit grantors",
        "66110 - Administration of financial markets",
        "66120 - Security and commodity contracts dealing activities",
        "64110 - Central banking",
        "64303 - Activities of venture and development capital companies",
    ), ("PAYMENTS", "CAPITAL", "FINANCE", "PAY", "WEALTH", "MONEY", "LENDING", "MARKETS",
        "FINTECH", "LEDGER")),
    (8.0, (
        "64209 - Activities of other holding companies n.e.c.",
        "64205 - Activities of financial services holding companies",
        "66220 - Activities of insurance agents and brokers",
        "69201 - Accounting and auditing activities",
        "69202 - Bookkeeping activities",
    ), ("HOLDINGS", "GROUP", "INVESTMENTS", "ACCOUNTANTS", "PARTNERS", "ASSOCIATES")),
    (10.0, (
        "41100 - Development of building projects",
        "41201 - Construction of commercial buildings",
        "41202 - Construction of domestic buildings",
        "43210 - Electrical installation",
        "43220 - Plumbing, heat and air-conditioning installation",
        "43390 - Other building completion and finishing",
        "43999 - Other specialised construction activities n.e.c.",
    ), ("CONSTRUCTION", "BUILDERS", "ELECTRICAL", "PLUMBING", "ROOFING", "DEVELOPMENTS",
        "CONTRACTORS")),
    (10.0, (
        "68100 - Buying and selling of own real estate",
        "68209 - Other letting and operating of own or leased real estate",
        "68310 - Real estate agencies",
        "68320 - Management of real estate on a fee or contract basis",
    ), ("PROPERTIES", "PROPERTY", "ESTATES", "LETTINGS", "HOMES", "LAND")),
    (8.0, (
        "47910 - Retail sale via mail order houses or via Internet",
        "47190 - Other retail sale in non-specialised stores",
        "47710 - Retail sale of clothing in specialised stores",
        "46900 - Non-specialised wholesale trade",
        "45111 - Sale of new cars and light motor vehicles",
    ), ("TRADING", "RETAIL", "STORES", "WHOLESALE", "FASHION", "MOTORS", "SUPPLIES")),
    (6.0, (
        "56101 - Licensed restaurants",
        "56102 - Unlicensed restaurants and cafes",
        "56302 - Public houses and bars",
        "55100 - Hotels and similar accommodation",
    ), ("KITCHEN", "CAFE", "RESTAURANTS", "INNS", "HOSPITALITY", "EATERY")),
    (11.0, (
        "70229 - Management consultancy activities other than financial management",
        "74909 - Other professional, scientific and technical activities n.e.c.",
        "73110 - Advertising agencies",
        "74100 - specialised design activities",
        "82990 - Other business support service activities n.e.c.",
        "69102 - Solicitors",
        "71129 - Other engineering activities",
    ), ("CONSULTING", "CONSULTANCY", "MEDIA", "DESIGN", "MARKETING", "ENGINEERING",
        "SERVICES", "LEGAL", "STUDIO")),
    (5.0, (
        "86900 - Other human health activities",
        "86210 - General medical practice activities",
        "87900 - Other residential care activities n.e.c.",
        "88100 - Social work activities without accommodation for the elderly and disabled",
        "96020 - Hairdressing and other beauty treatment",
        "93130 - Fitness facilities",
    ), ("HEALTHCARE", "CARE", "CLINIC", "WELLBEING", "FITNESS", "BEAUTY", "DENTAL")),
    (4.0, (
        "49410 - Freight transport by road",
        "49320 - Taxi operation",
        "52290 - Other transportation support activities",
        "45200 - Maintenance and repair of motor vehicles",
    ), ("LOGISTICS", "TRANSPORT", "HAULAGE", "COURIERS", "FREIGHT", "GARAGE")),
    (5.0, (
        "25990 - Manufacture of other fabricated metal products n.e.c.",
        "10890 - Manufacture of other food products n.e.c.",
        "32990 - Other manufacturing n.e.c.",
        "72190 - Other research and experimental development on natural sciences and "
        "engineering",
        "35110 - Production of electricity",
    ), ("MANUFACTURING", "FABRICATIONS", "FOODS", "INDUSTRIES", "ENERGY", "BIOSCIENCE")),
    (4.0, (
        "59111 - Motion picture production activities",
        "90030 - Artistic creation",
        "85590 - Other education n.e.c.",
        "85600 - Educational support services",
        "94990 - Activities of other membership organisations n.e.c.",
        "96090 - Other personal service activities n.e.c.",
    ), ("PRODUCTIONS", "FILMS", "ACADEMY", "TRAINING", "LEARNING", "ARTS", "EVENTS")),
    (2.0, (
        "01110 - Growing of cereals (except rice), leguminous crops and oil seeds",
        "01410 - Raising of dairy cattle",
        "81210 - General cleaning of buildings",
    ), ("FARMS", "FARMING", "CLEANING", "AGRICULTURE", "GROUNDS")),
    (5.0, ("99999 - Dormant Company",), ("HOLDINGS", "VENTURES", "ENTERPRISES")),
    (1.0, ("None Supplied",), ("ENTERPRISES", "VENTURES", "TRUST")),
)

NAME_STARTS = (
    "BRIGHT", "NORTH", "BLUE", "SILVER", "OAK", "RED", "IRON", "CLEAR", "GREEN", "SWIFT",
    "STONE", "GOLD", "HIGH", "WEST", "EAST", "SUN", "STAR", "ASH", "ELM", "FOX", "KING",
    "NOVA", "PINE", "RIVER", "SKY", "CROWN", "BLACK", "WHITE", "LION", "CEDAR", "FIRST",
    "TRUE", "BOLD", "APEX", "ZEN", "BEACON", "MERIDIAN", "ORBIT", "PIVOT", "QUANTUM",
)
NAME_ENDS = (
    "WAVE", "GATE", "FIELD", "BRIDGE", "LINE", "PEAK", "WOOD", "SIDE", "POINT", "STONE",
    "HAVEN", "FORD", "WELL", "MOOR", "VALE", "LIGHT", "PATH", "CREST", "WORKS", "HILL",
    "", "", "", "",
)
SURNAMES = (
    "SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "JOHNSON", "DAVIES",
    "PATEL", "ROBINSON", "WRIGHT", "THOMPSON", "EVANS", "WALKER", "WHITE", "ROBERTS",
    "KHAN", "HUGHES", "MURPHY", "CAMPBELL", "MACDONALD", "O'BRIEN", "ALI", "SINGH",
)

# (category, weight, name suffixes, company-number prefix per country or None).
CATEGORIES: tuple[tuple[str, float], ...] = (
    ("Private Limited Company", 88.0),
    ("PRI/LTD BY GUAR/NSC (Private, limited by guarantee, no share capital)", 3.0),
    ("Limited Liability Partnership", 2.0),
    ("Community Interest Company", 1.5),
    ("PLC", 0.6),
    ("Limited Partnership", 0.8),
    ("Charitable Incorporated Organisation", 0.8),
    ("Registered Society", 0.5),
    ("Private Unlimited Company", 0.4),
    ("Scottish Partnership", 0.2),
    ("Other company type", 0.6),
    ("Overseas Entity", 0.3),
)
STATUSES: tuple[tuple[str, float], ...] = (
    ("Active", 90.0),
    ("Active - Proposal to Strike off", 5.0),
    ("Liquidation", 2.5),
    ("In Administration", 0.8),
    ("Voluntary Arrangement", 0.4),
    ("Live but Receiver Manager on at least one charge", 0.1),
    ("Dissolved", 0.3),
)
ACCOUNT_CATEGORIES: tuple[tuple[str, float], ...] = (
    ("MICRO ENTITY", 38.0),
    ("TOTAL EXEMPTION FULL", 20.0),
    ("UNAUDITED ABRIDGED", 8.0),
    ("DORMANT", 9.0),
    ("NO ACCOUNTS FILED", 12.0),
    ("SMALL", 4.0),
    ("FULL", 3.5),
    ("GROUP", 1.5),
    ("MEDIUM", 0.8),
    ("AUDIT EXEMPTION SUBSIDIARY", 1.2),
    ("TOTAL EXEMPTION SMALL", 1.5),
    ("ACCOUNTS TYPE NOT AVAILABLE", 0.5),
)

# Register prefixes by country group; "" means the plain 8-digit England & Wales range.
_PREFIX = {
    ("Limited Liability Partnership", ENGLAND): "OC",
    ("Limited Liability Partnership", SCOTLAND): "SO",
    ("Limited Liability Partnership", NI): "NC",
    ("Limited Partnership", ENGLAND): "LP",
    ("Limited Partnership", SCOTLAND): "SL",
    ("Limited Partnership", NI): "NL",
    ("Scottish Partnership", SCOTLAND): "SG",
    ("Charitable Incorporated Organisation", ENGLAND): "CE",
    ("Charitable Incorporated Organisation", SCOTLAND): "CS",
    ("Registered Society", ENGLAND): "RS",
    ("Registered Society", SCOTLAND): "SP",
    ("Registered Society", NI): "NR",
    ("Overseas Entity", ENGLAND): "OE",
    ("Other company type", ENGLAND): "FC",
}
_SUFFIX = {
    "Limited Liability Partnership": ("LLP",),
    "Limited Partnership": ("LP", "L.P.", "FUND LP"),
    "Scottish Partnership": ("LP", "PARTNERSHIP"),
    "PLC": ("PLC", "P.L.C."),
    "Community Interest Company": ("CIC", "C.I.C."),
    "Charitable Incorporated Organisation": ("FOUNDATION", "TRUST", "CHARITY"),
    "Registered Society": ("CO-OPERATIVE LIMITED", "SOCIETY LIMITED"),
    "Private Unlimited Company": ("UNLIMITED", "COMPANY"),
    "Other company type": ("LIMITED", "GMBH", "INC", "B.V.", "S.A."),
    "Overseas Entity": ("INC", "LIMITED", "S.A.R.L."),
}
_DEFAULT_SUFFIX = ("LIMITED", "LIMITED", "LIMITED", "LTD", "LTD", "LTD.", "LIMITED", "UK LIMITED")

BAD_KINDS = ("bad_date", "missing_company_number", "wrong_column_count")


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int  # 1-based physical line in the file (the header is line 1)
    kind: str


def _picker(rng: Random, items: Sequence[tuple[str, float]]) -> Callable[[], str]:
    """A fast weighted choice: one random() and one bisect per call."""
    values = [value for value, _ in items]
    cumulative: list[float] = []
    total = 0.0
    for _, weight in items:
        total += weight
        cumulative.append(total)
    random = rng.random

    def pick() -> str:
        return values[bisect(cumulative, random() * total)]

    return pick


class _Numbers:
    """Unique company numbers: one rising counter per register prefix, with random gaps
    so the numbers look like a sample of the register rather than a sequence."""

    def __init__(self, rng: Random, rows: int) -> None:
        self._rng = rng
        self._next: dict[str, int] = {}
        # Gaps sized so that even the small prefixes (6 digits) do not overflow.
        self._gap = max(1, min(40, 400_000 // max(1, rows // 20)))

    def take(self, prefix: str) -> str:
        width = 8 - len(prefix)
        current = self._next.get(prefix)
        if current is None:
            current = 1 + self._rng.randrange(10 ** (width - 2))
        current += 1 + int(self._rng.random() * self._gap)
        if current >= 10**width:
            if prefix == "":
                raise ValueError("ran out of company numbers; is --rows above 50 million?")
            return self.take("")  # that register is full: use the main one
        self._next[prefix] = current
        return f"{prefix}{current:0{width}d}"


class _Calendar:
    """Dates as day ordinals, formatted by table lookup: the generator formats about ten
    dates per row, and ``date`` objects plus f-strings would dominate its run time."""

    def __init__(self, first_year: int, last_year: int) -> None:
        self.base = date(first_year, 1, 1).toordinal()
        end = date(last_year, 12, 31).toordinal()
        self.text = [f"{d.day:02d}/{d.month:02d}/{d.year:04d}"
                     for d in map(date.fromordinal, range(self.base, end + 1))]
        # month_end[(year - first_year) * 12 + month - 1]: ordinal of that month's last day
        self.first_year = first_year
        self.month_end = [
            (date(y + (m == 12), m % 12 + 1, 1).toordinal() - 1)
            for y in range(first_year, last_year + 1) for m in range(1, 13)]

    def fmt(self, ordinal: int) -> str:
        return self.text[ordinal - self.base]

    def year_month(self, ordinal: int) -> tuple[int, int]:
        d = date.fromordinal(ordinal)
        return d.year, d.month

    def end_of(self, year: int, month: int) -> int:
        return self.month_end[(year - self.first_year) * 12 + month - 1]


def _cumulative(weights: Sequence[float]) -> tuple[list[float], float]:
    cumulative: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    return cumulative, total


class _RowMaker:
    """Makes one good row per call.

    Speed matters (a million rows should take seconds), so the expensive parts of a
    row are drawn from pools made once per file: addresses, name stems and filing
    histories (incorporation, accounts, returns and confirmation statement dates).
    A row then costs about fifteen random draws. The pools are big enough that the
    data does not look repetitive; real registers repeat towns and dates a lot too.
    """

    def __init__(self, rng: Random, rows: int, as_of: date) -> None:
        self.rng = rng
        self.random = rng.random
        self.numbers = _Numbers(rng, rows)
        self.calendar = _Calendar(as_of.year - 126, as_of.year + 3)
        self.as_of = as_of.toordinal()
        self.as_of_ym = (as_of.year, as_of.month)
        self.category = _picker(rng, CATEGORIES)
        self.status = _picker(rng, STATUSES)
        self.accounts_category = _picker(rng, ACCOUNT_CATEGORIES)
        self.town_weights, self.town_total = _cumulative([town[4] for town in TOWNS])
        self.sector_weights, self.sector_total = _cumulative([s[0] for s in SECTORS])
        self.empty_previous = ("",) * 20
        for pool in (NAME_STARTS, NAME_ENDS, SURNAMES, STREETS, BUILDINGS, LOCALITIES):
            # generate() writes good rows without a csv.writer, so no value may need quoting
            assert not any('"' in value for value in pool)
        self.addresses = [self._address() for _ in range(8192)]
        self.stems = [self._stem() for _ in range(8192)]
        self.histories = [self._history() for _ in range(16384)]

    def choice(self, items: Sequence[str]) -> str:
        return items[int(self.random() * len(items))]

    # -- pools -----------------------------------------------------------------------

    def _address(self) -> tuple[str, str, str, str, str, str, str]:
        """(line 1, line 2, post town, county, country as shown, postcode, country)."""
        rnd = self.random
        town, county, country, outwards, _ = TOWNS[
            bisect(self.town_weights, rnd() * self.town_total)]
        building = self.choice(BUILDINGS)
        street = f"{int(rnd() * 240) + 1} {self.choice(STREETS)}"
        outward = self.choice(outwards)
        if country == IRELAND:  # Eircode: routing key + 4-character unique identifier
            postcode = f"{outward} {self.choice(_EIR)}{int(rnd() * 900) + 100}"
        else:
            postcode = f"{outward} {int(rnd() * 10)}{self.choice(_INWARD)}{self.choice(_INWARD)}"
        shown = country
        r = rnd()
        if country != IRELAND and r < 0.25:  # the register often says less
            shown = "UNITED KINGDOM" if r < 0.12 else ""
        return (f"{building} {street}" if building else street, self.choice(LOCALITIES),
                town, county if rnd() < 0.8 else "", shown, postcode, country)

    def _stem(self) -> str:
        r = self.random()
        if r < 0.55:
            return self.choice(NAME_STARTS) + self.choice(NAME_ENDS)
        if r < 0.80:
            return self.choice(SURNAMES)
        if r < 0.92:
            return f"{self.choice(SURNAMES)} & {self.choice(SURNAMES)}"
        return f"{self.choice(NAME_STARTS)}{self.choice(NAME_ENDS)} {self.choice(SURNAMES)}"

    def _history(self) -> tuple[int, int, str, str, str, str, str, str, str, str, str, str]:
        """(age in days, incorporation ordinal, and the 10 date/accounts fields from
        IncorporationDate on: incorporated, ref day, ref month, accounts next due,
        last made up, category, returns next due, last made up, confirmation
        statement next due, last made up)."""
        rnd = self.random
        cal = self.calendar
        fmt = cal.fmt
        as_of = self.as_of
        # Many young companies, a long tail back a century (median about six years).
        age = int(rnd() ** 4 * 36500) + 30
        incorporated = as_of - age
        category = "NO ACCOUNTS FILED" if age < 540 else self.accounts_category()
        # Accounting reference date: a month end, mostly the incorporation month's.
        _, inc_month = cal.year_month(incorporated)
        ref_month = inc_month if rnd() < 0.6 else _REF_MONTHS[int(rnd() * len(_REF_MONTHS))]
        year, month = self.as_of_ym
        # the latest year end that is more than nine months old has been filed
        filed_year = year - 1 if ref_month < month else year - 2
        last_ref = cal.end_of(filed_year, ref_month)
        ref_day = fmt(last_ref)[:2]
        if last_ref <= incorporated:  # first accounts: due 21 months after incorporation
            accounts_last, accounts_next = "", fmt(incorporated + 640)
        elif category == "NO ACCOUNTS FILED":  # an older company that is late
            accounts_last, accounts_next = "", fmt(last_ref + 274)
        else:
            accounts_last = fmt(last_ref)
            accounts_next = fmt(cal.end_of(filed_year + 1, ref_month) + 274)
        if incorporated < 735900 and rnd() < 0.8:  # annual returns ended in June 2016
            returns = 735600 + int(rnd() * 400)
            returns_last, returns_next = fmt(returns), fmt(returns + 42)
        else:
            returns_last = returns_next = ""
        if age > 365:
            confirmed = as_of - int(rnd() * 365)
            conf_last, conf_next = fmt(confirmed), fmt(confirmed + 379)
        else:
            conf_last, conf_next = "", fmt(incorporated + 379)
        return (age, incorporated, fmt(incorporated), ref_day, str(ref_month), accounts_next,
                accounts_last, category, returns_next, returns_last, conf_next, conf_last)

    # -- rows --------------------------------------------------------------------------

    def name(self, words: tuple[str, ...], category: str) -> str:
        rnd = self.random
        stem = self.stems[int(rnd() * len(self.stems))]
        suffixes = _SUFFIX.get(category, _DEFAULT_SUFFIX)
        suffix = suffixes[int(rnd() * len(suffixes))]
        if rnd() < 0.85:
            return f"{stem} {words[int(rnd() * len(words))]} {suffix}"
        return f"{stem} {suffix}"

    def row(self) -> list[str]:
        rnd = self.random
        line1, line2, town, county, shown_country, postcode, country = self.addresses[
            int(rnd() * len(self.addresses))]
        _, sic_texts, words = SECTORS[bisect(self.sector_weights, rnd() * self.sector_total)]
        category = self.category()
        if country == IRELAND:
            # Irish-registered companies appear in the register as overseas companies.
            category = "Other company type"
            prefix = "FC"
            origin = "IRELAND"
        else:
            group = ENGLAND if country == WALES else country
            prefix = _PREFIX.get((category, group), "SC" if group == SCOTLAND else
                                 "NI" if group == NI else "")
            origin = "United Kingdom"
            if category == "Other company type" or category == "Overseas Entity":
                origin = self.choice(_ORIGINS)
        number = self.numbers.take(prefix)
        history = self.histories[int(rnd() * len(self.histories))]
        age, incorporated = history[0], history[1]
        if history[7] == "DORMANT":
            sic_texts = _DORMANT
        status = self.status()
        dissolved = (self.calendar.fmt(self.as_of - int(rnd() * 200))
                     if status == "Dissolved" else "")
        if rnd() < 0.2:
            charges = int(rnd() ** 6 * 9)
            outstanding = int(rnd() * (charges + 1))
            mortgages: Sequence[str] = (str(charges), str(outstanding), "0",
                                        str(charges - outstanding))
        else:
            mortgages = _NO_MORTGAGES
        n_texts = len(sic_texts)
        first_sic = sic_texts[int(rnd() * n_texts)]
        r = rnd()
        if r < 0.72 or n_texts == 1:
            sics: Sequence[str] = (first_sic, "", "", "")
        else:
            more = [first_sic]
            for _ in range(1 if r < 0.92 else 2 if r < 0.98 else 3):
                text = sic_texts[int(rnd() * n_texts)]
                if text not in more:
                    more.append(text)
            sics = more + [""] * (4 - len(more))
        previous: Sequence[str] = self.empty_previous
        if age > 400 and rnd() < 0.14:
            names: list[str] = []
            change = self.as_of
            for _ in range(1 + int(rnd() ** 3 * 4)):
                change = change - 30 - int(rnd() * (change - incorporated - 30) * 0.5)
                if change <= incorporated:
                    break
                names += [self.calendar.fmt(change), self.name(words, category)]
            previous = names + [""] * (20 - len(names))
        partners: Sequence[str] = _NO_PARTNERS
        if category == "Limited Partnership" or category == "Scottish Partnership":
            partners = (str(int(rnd() * 3) + 1), str(int(rnd() * 8)))
        extras = rnd()
        return [
            self.name(words, category), number,
            self.choice(CARE_OF) if extras < 0.04 else "",
            f"PO BOX {int(rnd() * 900) + 100}" if 0.04 <= extras < 0.045 else "",
            line1, line2, town, county, shown_country, postcode, category, status, origin,
            dissolved, *history[2:8], *history[8:10], *mortgages, *sics, *partners,
            URI_PREFIX + number, *previous, *history[10:12],
        ]


_ORIGINS = ("UNITED STATES", "GERMANY", "NETHERLANDS", "JERSEY", "GUERNSEY", "FRANCE",
            "CAYMAN ISLANDS")
_DORMANT = ("99999 - Dormant Company",)
_REF_MONTHS = (3, 3, 12, 12, 12, 6, 9, 4)
_NO_MORTGAGES = ("0", "0", "0", "0")
_NO_PARTNERS = ("0", "0")
_EIR = "ACDEFHKNPRTVWXY"
_INWARD = "ABDEFGHJLNPQRSTUWXYZ"


def _bad_row(maker: _RowMaker, kind: str) -> list[str]:
    row = maker.row()
    if kind == "bad_date":
        row[14] = maker.choice(("31/02/2019", "2019-04-01", "13/13/2013", "00/01/2001"))
    elif kind == "missing_company_number":
        row[1] = ""
    else:
        row = row[: 40 + int(maker.random() * 10)]
    return row


def generate(out: TextIO, rows: int, *, seed: int = 0, bad_rows: int = 0,
             as_of: date = date(2024, 6, 1)) -> list[BadRow]:
    """Write a header and ``rows`` good rows plus ``bad_rows`` malformed ones to ``out``
    (opened with ``newline=""``). Returns where the malformed rows are."""
    rng = Random(seed)
    maker = _RowMaker(rng, rows + bad_rows, as_of)
    total = rows + bad_rows
    bad_at = sorted(rng.sample(range(total), bad_rows)) if bad_rows else []
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    # The real header is not quoted.
    out.write(",".join(HEADER) + "\r\n")
    bad: list[BadRow] = []
    make = maker.row
    index = 0
    chunk = 10_000
    for position in [*bad_at, total]:
        while index < position:
            # Good rows never contain a double quote (see _RowMaker), so quoting every
            # field is a plain join: about twice as fast as csv.writer.
            n = min(chunk, position - index)
            out.write("".join(['"' + '","'.join(make()) + '"\r\n' for _ in range(n)]))
            index += n
        if index < total:
            kind = BAD_KINDS[len(bad) % len(BAD_KINDS)]
            writer.writerow(_bad_row(maker, kind))
            bad.append(BadRow(line=index + 2, kind=kind))
            index += 1
    return bad


# --- filing histories ----------------------------------------------------------------

_FIRST_NAMES = ("Amelia", "Oliver", "Isla", "George", "Ava", "Noah", "Priya", "Arjun",
                "Siobhan", "Callum", "Fatima", "Tom", "Grace", "Kwame", "Mei", "Rhys")
_TITLES = ("Mr", "Ms", "Mrs", "Dr")
#: SIC divisions whose companies raise money and hire more often (software, data,
#: publishing, finance): their histories get recent activity more often.
_GROWTH_DIVISIONS = frozenset({"58", "62", "63", "64", "66"})
#: BasicCompanyData accounts categories as the filing history's description spells them.
_ACCOUNTS_TYPES = {
    "MICRO ENTITY": "micro-entity", "TOTAL EXEMPTION FULL": "total-exemption-full",
    "TOTAL EXEMPTION SMALL": "total-exemption-small", "UNAUDITED ABRIDGED":
    "unaudited-abridged", "SMALL": "small", "FULL": "full", "GROUP": "group",
    "MEDIUM": "medium", "DORMANT": "dormant",
    "AUDIT EXEMPTION SUBSIDIARY": "audit-exemption-subsidiary",
}


def _transaction_id(*parts: object) -> str:
    """An opaque, stable id like the API's (``MzA1NjIxMjU1OWFkaXF6a2N4``)."""
    digest = hashlib.sha1(":".join(map(str, parts)).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:24]


def _filing(number: str, form: str, category: str, day: date, description: str,
            **values: Any) -> dict[str, Any]:
    txid = _transaction_id(number, form, day.isoformat(), description)
    return {
        "category": category, "date": day.isoformat(), "type": form,
        "description": description, "description_values": values,
        "transaction_id": txid,
        "links": {"self": f"/company/{number}/filing-history/{txid}"},
    }


def filing_history(
    company_number: str,
    *,
    incorporated: date | None,
    accounts_category: str | None,
    accounts_last_made_up: date | None,
    conf_stmt_last_made_up: date | None,
    sic_codes: Sequence[str],
    as_of: date,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A plausible filing history for a generated company, newest first, as the API
    lists it: incorporation and its first director, the last two accounts, the last
    confirmation statement, and, for some companies (more often in software and
    finance), recent activity before ``as_of``: a share allotment (``SH01``) in the last
    75 days, a director appointed or leaving, a charge registered. Deterministic for a
    given company, ``as_of`` and ``seed``; nothing is dated after ``as_of``."""
    rng = Random(f"{seed}:{company_number}:{as_of.isoformat()}")
    items: list[dict[str, Any]] = []

    def person() -> str:
        return (f"{rng.choice(_TITLES)} {rng.choice(_FIRST_NAMES)} "
                f"{rng.choice(SURNAMES).title()}")

    if incorporated is not None and incorporated <= as_of:
        items.append(_filing(company_number, "NEWINC", "incorporation", incorporated,
                             "incorporation-company"))
        items.append(_filing(company_number, "AP01", "officers", incorporated,
                             "appoint-person-director-company-with-name-date",
                             appointment_date=incorporated.isoformat(),
                             officer_name=person()))
    kind = _ACCOUNTS_TYPES.get((accounts_category or "").strip().upper())
    if accounts_last_made_up is not None and kind is not None:
        for years in (1, 0):
            made_up = accounts_last_made_up - timedelta(days=365 * years)
            filed = made_up + timedelta(days=150 + rng.randrange(120))
            if (incorporated is None or made_up > incorporated) and filed <= as_of:
                items.append(_filing(company_number, "AA", "accounts", filed,
                                     f"accounts-with-accounts-type-{kind}",
                                     made_up_date=made_up.isoformat()))
    if conf_stmt_last_made_up is not None:
        filed = min(as_of, conf_stmt_last_made_up + timedelta(days=rng.randrange(14)))
        items.append(_filing(company_number, "CS01", "confirmation-statement", filed,
                             "confirmation-statement-with-no-updates",
                             made_up_date=conf_stmt_last_made_up.isoformat()))
    growing = any(code[:2] in _GROWTH_DIVISIONS for code in sic_codes)
    if rng.random() < (0.45 if growing else 0.15):
        if rng.random() < 0.6:
            allotted = as_of - timedelta(days=2 + rng.randrange(74))
            figure = f"{rng.randrange(1_000, 250_000):,}"
            items.append(_filing(company_number, "SH01", "capital", allotted,
                                 "capital-allotment-shares", date=allotted.isoformat(),
                                 capital=[{"currency": "GBP", "figure": figure}]))
        if rng.random() < 0.6:
            appointed = as_of - timedelta(days=5 + rng.randrange(200))
            items.append(_filing(company_number, "AP01", "officers", appointed,
                                 "appoint-person-director-company-with-name-date",
                                 appointment_date=appointed.isoformat(),
                                 officer_name=person()))
        if rng.random() < 0.2:
            left = as_of - timedelta(days=10 + rng.randrange(300))
            items.append(_filing(company_number, "TM01", "officers", left,
                                 "termination-director-company-with-name-termination-date",
                                 termination_date=left.isoformat(), officer_name=person()))
        if rng.random() < 0.2:
            charged = as_of - timedelta(days=10 + rng.randrange(300))
            items.append(_filing(company_number, "MR01", "mortgage", charged,
                                 "mortgage-create-with-deed-with-charge-number-charge-"
                                 "creation-date", charge_creation_date=charged.isoformat()))
    items = [item for item in items if item["date"] <= as_of.isoformat()]
    items.sort(key=lambda item: (item["date"], item["transaction_id"]), reverse=True)
    return items


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, required=True, help="good data rows to write")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write ('-': stdout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-rows", type=int, default=0, help="malformed rows to add")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2024, 6, 1),
                        help="the file's snapshot date (YYYY-MM-DD); dates are relative to it")
    args = parser.parse_args(argv)
    if args.rows < 0 or args.bad_rows < 0:
        parser.error("--rows and --bad-rows must not be negative")
    started = time.perf_counter()
    if str(args.out) == "-":
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(newline="")
        bad = generate(sys.stdout, args.rows, seed=args.seed, bad_rows=args.bad_rows,
                       as_of=args.as_of)
    else:
        with args.out.open("w", encoding="utf-8", newline="", buffering=1 << 20) as out:
            bad = generate(out, args.rows, seed=args.seed, bad_rows=args.bad_rows,
                           as_of=args.as_of)
    for row in bad:
        print(f"bad row: line {row.line}: {row.kind}", file=sys.stderr)
    print(f"wrote {args.rows + args.bad_rows} rows ({len(bad)} malformed) "
          f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0

