"""Importing Companies House BasicCompanyData files into ``companies``, against a real
Postgres: counts, idempotent re-imports that keep enrichment, bad rows, hostile text,
header variants, and the bulk path for an empty table."""

from __future__ import annotations

import csv
import json
import zipfile
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from agents import companies_generator
from agents.companies_import import CSV_COLUMNS, CompaniesFileError, import_companies

Conn = psycopg.Connection[tuple[Any, ...]]
SECONDARY_INDEXES = {
    "companies_sic_codes_idx", "companies_post_town_idx", "companies_country_idx",
    "companies_status_idx", "companies_accounts_category_idx",
}


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return companies_generator


def write_generated(generator: ModuleType, path: Path, rows: int, **options: Any) -> list[Any]:
    with path.open("w", encoding="utf-8", newline="") as out:
        bad: list[Any] = generator.generate(out, rows, **options)
    return bad


def read_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.reader(file))[1:]


def write_rows(path: Path, rows: list[list[str]], *, header: str | None = None,
               lineterminator: str = "\r\n") -> None:
    """A BasicCompanyData file with these rows, quoted as the real one is."""
    from_generator = ",".join(_real_header())
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write((from_generator if header is None else header) + lineterminator)
        csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator=lineterminator).writerows(rows)


def _real_header() -> list[str]:
    """The header as Companies House writes it: some names start with a space."""
    spaced = {"CompanyNumber", "RegAddress.AddressLine2", "PreviousName_2.CONDATE",
              "ConfStmtLastMadeUpDate"}
    return [f" {name}" if name in spaced or (name.startswith("PreviousName_")
            and name.endswith(".CompanyName")) else name for name in CSV_COLUMNS]


def company_row(number: str, name: str, **fields: str) -> list[str]:
    row = [""] * len(CSV_COLUMNS)
    row[0], row[1] = name, number
    row[6], row[8], row[10], row[11] = "LONDON", "ENGLAND", "Private Limited Company", "Active"
    row[14] = "01/02/2020"
    row[26] = "62012 - Business and domestic software development"
    for column, value in fields.items():
        row[CSV_COLUMNS.index(column)] = value
    return row


def count(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM companies").fetchone()
    assert row is not None
    return int(row[0])


def secondary_ddl_in_place(conn: Conn) -> bool:
    indexes = {row[0] for row in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'companies'")}
    fk = conn.execute("SELECT 1 FROM pg_constraint WHERE conname = 'companies_org_id_fkey'")
    pending = conn.execute("SELECT count(*) FROM companies_import_deferred_ddl").fetchone()
    return SECONDARY_INDEXES <= indexes and fk.fetchone() is not None and pending == (0,)


async def test_generated_file_loads_with_every_field(
    generator: ModuleType, db_url: str, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "companies.csv"
    write_generated(generator, path, 400, seed=21)
    report = await import_companies(db_url, path, progress=True, batch_rows=64)

    assert (report.rows_read, report.inserted, report.updated, report.rejected) == (400, 400, 0, 0)
    assert report.unchanged == 0 and report.rejects == []
    assert report.seconds > 0 and report.rows_per_second > 0
    assert count(conn) == 400
    assert secondary_ddl_in_place(conn)

    rows = read_rows(path)
    with_history = next(row for row in rows if row[34] and row[26] != "None Supplied")
    got = conn.execute(
        "SELECT name, post_town, postcode, status, incorporation_date, accounts_ref_day, "
        "accounts_next_due, sic_codes, sic_texts, previous_names, uri, mortgages_charges, "
        "org_id = runner_default_org_id(), enrichment_status, care_of "
        "FROM companies WHERE company_number = %s", (with_history[1],)).fetchone()
    assert got is not None
    day, month, year = (int(part) for part in with_history[14].split("/"))
    texts = [text for text in with_history[26:30] if text]
    assert got[:4] == (with_history[0], with_history[6], with_history[9], with_history[11])
    assert got[4] == date(year, month, day)
    assert got[5] == int(with_history[15])
    assert got[7] == [text[:5] for text in texts] and got[8] == texts
    assert got[9][0]["name"] == with_history[34]
    changed = with_history[33].split("/")
    assert got[9][0]["changed_on"] == f"{changed[2]}-{changed[1]}-{changed[0]}"
    assert got[10] == with_history[32] and got[11] == int(with_history[22])
    assert got[12] is True and got[13] == "not_enriched"
    assert got[14] == (with_history[2] or None)  # empty fields are NULL, not ''

    none_supplied = conn.execute(
        "SELECT count(*) FROM companies WHERE sic_codes = '{}' AND sic_texts = '{}'").fetchone()
    expected = sum(1 for row in rows if row[26] == "None Supplied")
    assert none_supplied == (expected,)


async def test_reimport_updates_ch_fields_and_keeps_enrichment(
    generator: ModuleType, db_url: str, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "companies.csv"
    write_generated(generator, path, 300, seed=8)
    await import_companies(db_url, path, progress=False, batch_rows=50)
    rows = read_rows(path)
    enriched, renamed = rows[10][1], rows[20][1]
    conn.execute(
        "UPDATE companies SET website = 'https://example.test', employee_estimate = 42, "
        "tech_stack = '{react,stripe}', enrichment_status = 'enriched', enriched_at = now(), "
        "buying_signals = '[{\"kind\": \"hiring\"}]', industry_description = 'SaaS' "
        "WHERE company_number IN (%s, %s)", (enriched, renamed))
    before = dict(conn.execute(
        "SELECT company_number, (id, updated_at, imported_at)::text FROM companies").fetchall())

    again = await import_companies(db_url, path, progress=False, batch_rows=50)
    assert (again.rows_read, again.inserted, again.updated, again.unchanged) == (300, 0, 0, 300)
    assert count(conn) == 300

    rows[20][0] = "RENAMED HOLDINGS LIMITED"
    rows[20][11] = "Liquidation"
    changed = tmp_path / "changed.csv"
    write_rows(changed, rows)
    third = await import_companies(db_url, changed, progress=False, batch_rows=50)
    assert (third.inserted, third.updated, third.unchanged) == (0, 1, 299)
    assert count(conn) == 300

    after = dict(conn.execute(
        "SELECT company_number, (id, updated_at, imported_at)::text FROM companies").fetchall())
    assert {number for number in after if after[number] != before[number]} == {renamed}
    for number in (enriched, renamed):
        got = conn.execute(
            "SELECT website, employee_estimate, tech_stack, enrichment_status, buying_signals, "
            "industry_description, enriched_at IS NOT NULL, name, status "
            "FROM companies WHERE company_number = %s", (number,)).fetchone()
        assert got is not None
        assert got[:7] == ("https://example.test", 42, ["react", "stripe"], "enriched",
                           [{"kind": "hiring"}], "SaaS", True)
    assert conn.execute("SELECT name, status FROM companies WHERE company_number = %s",
                        (renamed,)).fetchone() == ("RENAMED HOLDINGS LIMITED", "Liquidation")


async def test_bad_rows_are_reported_and_good_rows_load(
    generator: ModuleType, db_url: str, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "companies.csv"
    bad = write_generated(generator, path, 500, seed=4, bad_rows=9)
    report = await import_companies(db_url, path, progress=False, batch_rows=100)

    assert report.rows_read == 509
    assert (report.inserted, report.rejected) == (500, 9)
    assert count(conn) == 500
    assert [reject.line for reject in report.rejects] == [row.line for row in bad]
    expected = {"bad_date": "is not a DD/MM/YYYY date", "missing_company_number":
                "no company number", "wrong_column_count": "fields, expected 55"}
    for reject, row in zip(report.rejects, bad, strict=True):
        assert expected[row.kind] in reject.reason, (reject, row)


async def test_more_bad_rows_than_reported(db_url: str, tmp_path: Path) -> None:
    rows = [company_row(f"{i:08d}", f"C{i} LTD", IncorporationDate="31/02/2020")
            for i in range(1, 8)]
    path = tmp_path / "bad.csv"
    write_rows(path, rows)
    report = await import_companies(db_url, path, progress=False, max_rejects=3)
    assert (report.rows_read, report.rejected, len(report.rejects)) == (7, 7, 3)
    assert [reject.line for reject in report.rejects] == [2, 3, 4]


async def test_hostile_text_lands_verbatim(db_url: str, conn: Conn, tmp_path: Path) -> None:
    names = {
        "00000001": "Robert'); DROP TABLE companies;--",
        "00000002": 'THE "QUOTED" COMPANY, LIMITED',
        "00000003": "BACK\\SLASH \\N LTD",
        "00000004": "LINE\nBREAK\r\nLTD",
        "00000005": "ÜNICODE CAFÉ 東京 LTD",
        "00000006": "TAB\tSEPARATED LTD",
        "00000007": "$$; SELECT pg_sleep(10); $$",
    }
    rows = [company_row(number, name, **{"RegAddress.AddressLine1": name})
            for number, name in names.items()]
    path = tmp_path / "hostile.csv"
    write_rows(path, rows)
    report = await import_companies(db_url, path, progress=False, batch_rows=2)
    assert (report.inserted, report.rejected) == (7, 0), report.rejects
    stored = dict(conn.execute("SELECT company_number, name FROM companies").fetchall())
    assert stored == names
    assert conn.execute("SELECT count(*) FROM companies WHERE address_line1 = name").fetchone() \
        == (7,)


@pytest.mark.parametrize("header", ["spaced", "stripped", "bom", "lf"])
async def test_header_variants(header: str, db_url: str, conn: Conn, tmp_path: Path) -> None:
    rows = [company_row("SC123456", "ALBA LTD"), company_row("NI654321", "ULSTER LTD")]
    path = tmp_path / "companies.csv"
    if header == "stripped":
        write_rows(path, rows, header=",".join(CSV_COLUMNS))
    elif header == "bom":
        write_rows(path, rows, header="\ufeff" + ",".join(_real_header()))
    elif header == "lf":
        write_rows(path, rows, lineterminator="\n")
    else:
        write_rows(path, rows)
    assert _real_header()[1] == " CompanyNumber"
    report = await import_companies(db_url, path, progress=False)
    assert (report.inserted, report.rejected) == (2, 0)
    assert count(conn) == 2


@pytest.mark.parametrize("header", [
    "CompanyName,CompanyNumber,Address",
    ",".join(CSV_COLUMNS).replace("RegAddress.PostTown", "RegAddress.Town"),
    "",
])
async def test_wrong_header_is_refused_and_writes_nothing(
    header: str, db_url: str, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "other.csv"
    write_rows(path, [company_row("01234567", "ACME LTD")], header=header)
    with pytest.raises(CompaniesFileError, match="not a Companies House BasicCompanyData CSV"):
        await import_companies(db_url, path, progress=False)
    assert count(conn) == 0


async def test_empty_file_is_refused(db_url: str, conn: Conn, tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(CompaniesFileError, match="empty"):
        await import_companies(db_url, path, progress=False)
    assert count(conn) == 0


async def test_repeated_number_last_row_wins(db_url: str, conn: Conn, tmp_path: Path) -> None:
    rows = [company_row("01234567", "FIRST LTD"), company_row("07654321", "OTHER LTD"),
            company_row("01234567", "SECOND LTD")]
    path = tmp_path / "repeated.csv"
    write_rows(path, rows)
    report = await import_companies(db_url, path, progress=False)
    assert (report.rows_read, report.inserted, report.rejected) == (3, 2, 1)
    assert report.rejects[0].line == 2 and "line 4" in report.rejects[0].reason
    assert conn.execute("SELECT name FROM companies WHERE company_number = '01234567'"
                        ).fetchone() == ("SECOND LTD",)


async def test_numbers_are_normalised_and_odd_rows_handled(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    rows = [
        company_row("sc000001", "LOWER CASE LTD"),
        company_row("1234", "SHORT NUMBER LTD"),
        company_row("ABC", "BAD NUMBER LTD"),
        company_row("01111111", ""),
        company_row("02222222", "BAD INT LTD", **{"Mortgages.NumMortCharges": "lots"}),
        company_row("03333333", "LEAP LTD", IncorporationDate="29/02/2024"),
        company_row("04444444", "NOT LEAP LTD", IncorporationDate="29/02/2023"),
        company_row("05555555", "ISO DATE LTD", IncorporationDate="2020-02-01"),
    ]
    path = tmp_path / "odd.csv"
    write_rows(path, rows)
    with path.open("a", encoding="utf-8", newline="") as out:
        out.write("\r\n\r\n")  # trailing blank lines are not rows
    report = await import_companies(db_url, path, progress=False)
    assert report.rows_read == 8
    assert {(r.line, r.reason.split(" ")[0]) for r in report.rejects} == {
        (4, "company"), (5, "no"), (6, "Mortgages.NumMortCharges"), (8, "IncorporationDate"),
        (9, "IncorporationDate")}
    assert sorted(row[0] for row in conn.execute("SELECT company_number FROM companies")) == [
        "00001234", "03333333", "SC000001"]


async def test_multiline_fields_across_batches(db_url: str, conn: Conn, tmp_path: Path) -> None:
    rows = [company_row(f"{i:08d}", f"COMPANY {i}\nTRADING AS\n\"C{i}\" LTD")
            for i in range(1, 41)]
    path = tmp_path / "multiline.csv"
    write_rows(path, rows)
    # Tiny batches: the reader must never cut a quoted field in two.
    report = await import_companies(db_url, path, progress=False, batch_rows=1)
    assert (report.rows_read, report.inserted, report.rejected) == (40, 40, 0)
    assert conn.execute("SELECT name FROM companies WHERE company_number = '00000007'"
                        ).fetchone() == ('COMPANY 7\nTRADING AS\n"C7" LTD',)


async def test_bulk_path_rebuilds_indexes_and_foreign_key(
    generator: ModuleType, db_url: str, conn: Conn, tmp_path: Path
) -> None:
    path = tmp_path / "companies.csv"
    write_generated(generator, path, 600, seed=30, bad_rows=3)
    report = await import_companies(db_url, path, progress=False, batch_rows=100, bulk=True)
    assert report.bulk_load
    assert (report.inserted, report.rejected) == (600, 3)
    assert count(conn) == 600
    assert secondary_ddl_in_place(conn)
    # The rebuilt GIN index serves discovery queries.
    conn.execute("SET enable_seqscan = off")
    plan = "\n".join(row[0] for row in conn.execute(
        "EXPLAIN SELECT id FROM companies WHERE sic_codes && '{62012}'"))
    assert "companies_sic_codes_idx" in plan

    # Not empty any more: a second bulk request quietly upserts instead.
    again = await import_companies(db_url, path, progress=False, batch_rows=100, bulk=True)
    assert not again.bulk_load and again.unchanged == 600


async def test_indexes_set_aside_by_a_dead_import_are_rebuilt(
    db_url: str, conn: Conn, tmp_path: Path
) -> None:
    ddl = conn.execute("SELECT pg_get_indexdef('companies_status_idx'::regclass)").fetchone()
    assert ddl is not None
    conn.execute("DROP INDEX companies_status_idx")
    conn.execute("INSERT INTO companies_import_deferred_ddl (name, ddl) VALUES (%s, %s)",
                 ("companies_status_idx", ddl[0]))
    path = tmp_path / "one.csv"
    write_rows(path, [company_row("01234567", "ACME LTD")])
    await import_companies(db_url, path, progress=False, bulk=False)
    assert secondary_ddl_in_place(conn)


async def test_through_a_pool(pool: AsyncConnectionPool[Any], conn: Conn,
                              tmp_path: Path) -> None:
    rows = [company_row(f"OC{i:06d}", f"PARTNERS {i} LLP") for i in range(1, 120)]
    path = tmp_path / "pooled.csv"
    write_rows(path, rows)
    report = await import_companies(pool, path, progress=False, batch_rows=10)
    assert (report.inserted, report.rejected) == (119, 0)
    assert count(conn) == 119
    async with pool.connection() as pooled:  # handed back clean: no transaction, no lock
        assert pooled.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        locks = await pooled.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())")
        assert await locks.fetchone() == (0,)


def test_report_as_json_dict() -> None:
    from agents.companies_import import ImportReport, Reject

    report = ImportReport(path="x.csv", rows_read=10, inserted=7, rejected=3, seconds=2.0,
                          rejects=[Reject(4, "no company number")])
    out = report.as_dict()
    assert out["rows_per_second"] == 5.0
    assert out["rejects"] == [{"line": 4, "reason": "no company number"}]
    assert json.loads(json.dumps(out)) == out


async def test_the_zip_companies_house_publishes(db_url: str, conn: Conn, tmp_path: Path) -> None:
    csv_path = tmp_path / "BasicCompanyDataAsOneFile-2024-06-01.csv"
    write_rows(csv_path, [company_row(f"{i:08d}", f"ZIPPED {i} LTD") for i in range(1, 30)])
    path = tmp_path / "BasicCompanyDataAsOneFile-2024-06-01.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(csv_path, csv_path.name)
    report = await import_companies(db_url, path, progress=True, batch_rows=5)
    assert (report.rows_read, report.inserted) == (29, 29)
    assert count(conn) == 29

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.write(csv_path, "a.csv")
        archive.write(csv_path, "b.csv")
    with pytest.raises(CompaniesFileError, match="2 CSV files"):
        await import_companies(db_url, two, progress=False)


async def test_header_only_file_loads_nothing(db_url: str, conn: Conn, tmp_path: Path) -> None:
    path = tmp_path / "header-only.csv"
    write_rows(path, [])
    report = await import_companies(db_url, path, progress=False)
    assert (report.rows_read, report.inserted, report.rejected) == (0, 0, 0)
    assert count(conn) == 0
