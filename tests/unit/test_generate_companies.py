"""scripts/generate_companies.py: the synthetic BasicCompanyData files tests and
benchmarks load must look like the real product."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from types import ModuleType

import pytest

from agents import companies_generator

# The header of the real files, spaces and all.
REAL_HEADER = (
    "CompanyName, CompanyNumber,RegAddress.CareOf,RegAddress.POBox,RegAddress.AddressLine1,"
    " RegAddress.AddressLine2,RegAddress.PostTown,RegAddress.County,RegAddress.Country,"
    "RegAddress.PostCode,CompanyCategory,CompanyStatus,CountryOfOrigin,DissolutionDate,"
    "IncorporationDate,Accounts.AccountRefDay,Accounts.AccountRefMonth,Accounts.NextDueDate,"
    "Accounts.LastMadeUpDate,Accounts.AccountCategory,Returns.NextDueDate,"
    "Returns.LastMadeUpDate,Mortgages.NumMortCharges,Mortgages.NumMortOutstanding,"
    "Mortgages.NumMortPartSatisfied,Mortgages.NumMortSatisfied,SICCode.SicText_1,"
    "SICCode.SicText_2,SICCode.SicText_3,SICCode.SicText_4,LimitedPartnerships.NumGenPartners,"
    "LimitedPartnerships.NumLimPartners,URI,PreviousName_1.CONDATE, PreviousName_1.CompanyName,"
    " PreviousName_2.CONDATE, PreviousName_2.CompanyName,PreviousName_3.CONDATE,"
    " PreviousName_3.CompanyName,PreviousName_4.CONDATE, PreviousName_4.CompanyName,"
    "PreviousName_5.CONDATE, PreviousName_5.CompanyName,PreviousName_6.CONDATE,"
    " PreviousName_6.CompanyName,PreviousName_7.CONDATE, PreviousName_7.CompanyName,"
    "PreviousName_8.CONDATE, PreviousName_8.CompanyName,PreviousName_9.CONDATE,"
    " PreviousName_9.CompanyName,PreviousName_10.CONDATE, PreviousName_10.CompanyName,"
    "ConfStmtNextDueDate, ConfStmtLastMadeUpDate"
)
DATE = re.compile(r"\d{2}/\d{2}/\d{4}")


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return companies_generator


def _generate(generator: ModuleType, rows: int, **options: object) -> tuple[str, list[object]]:
    out = io.StringIO(newline="")
    bad = generator.generate(out, rows, **options)
    return out.getvalue(), bad


def test_header_is_the_real_one_in_order(generator: ModuleType) -> None:
    text, _ = _generate(generator, 3, seed=1)
    assert text.split("\r\n", 1)[0] == REAL_HEADER
    assert ",".join(generator.HEADER) == REAL_HEADER


def test_rows_look_like_the_real_file(generator: ModuleType) -> None:
    text, _ = _generate(generator, 2000, seed=3)
    lines = text.split("\r\n")
    assert lines[-1] == ""  # CRLF after every line, the last included
    assert all(line.startswith('"') and line.endswith('"') for line in lines[1:-1])
    rows = list(csv.reader(io.StringIO(text, newline="")))[1:]
    assert len(rows) == 2000
    assert {len(row) for row in rows} == {55}
    numbers = [row[1] for row in rows]
    assert len(set(numbers)) == len(numbers)
    assert all(re.fullmatch(r"[A-Z0-9]{2}\d{6}", number) for number in numbers)
    assert any(number.startswith("SC") for number in numbers)
    assert any(number.startswith("NI") for number in numbers)
    for row in rows:
        assert row[0] and row[0] == row[0].upper()
        assert row[32] == "http://business.data.gov.uk/id/company/" + row[1]
        for index in (13, 14, 17, 18, 20, 21, 53, 54, *range(33, 53, 2)):
            assert row[index] == "" or DATE.fullmatch(row[index]), (index, row[index])
        assert row[14], "every company has an incorporation date"
        assert re.fullmatch(r"\d{5} - .+|None Supplied", row[26])
    countries = {row[8] for row in rows}
    assert {"ENGLAND", "WALES", "SCOTLAND", "NORTHERN IRELAND", "IRELAND"} <= countries
    sic_codes = {row[26][:5] for row in rows}
    assert {"62012", "62020"} & sic_codes and {"64999", "66190"} & sic_codes
    statuses = [row[11] for row in rows]
    assert statuses.count("Active") > len(rows) * 0.8
    assert "MICRO ENTITY" in {row[19] for row in rows}


def test_same_seed_same_bytes_other_seed_other_bytes(generator: ModuleType) -> None:
    first, _ = _generate(generator, 300, seed=11, bad_rows=5)
    again, _ = _generate(generator, 300, seed=11, bad_rows=5)
    other, _ = _generate(generator, 300, seed=12, bad_rows=5)
    assert first == again
    assert first != other


def test_bad_rows_are_added_and_reported(generator: ModuleType) -> None:
    text, bad = _generate(generator, 100, seed=5, bad_rows=6)
    lines = text.split("\r\n")
    assert len(lines) == 1 + 106 + 1  # header, rows, the empty string after the last CRLF
    assert [row.kind for row in bad] == ["bad_date", "missing_company_number",
                                         "wrong_column_count"] * 2
    for row in bad:
        fields = next(csv.reader([lines[row.line - 1]]))
        if row.kind == "wrong_column_count":
            assert len(fields) != 55
        elif row.kind == "missing_company_number":
            assert fields[1] == ""
        else:
            assert fields[14] not in ("",) and len(fields) == 55


def test_command_line_writes_the_file(generator: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "companies.csv"
    assert generator.main(["--rows", "50", "--seed", "2", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.count(b"\r\n") == 51
    text, _ = _generate(generator, 50, seed=2)
    assert data.decode() == text
