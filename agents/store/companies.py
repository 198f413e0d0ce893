"""The SQL behind the Companies House import (``agents/companies_import.py``).

A batch of the CSV goes through a temporary staging table that mirrors the file
column for column: COPY parses it (in C, far faster than Python could), the staging
table's checks catch what COPY's types do not, and one ``INSERT ... SELECT`` moves
the batch into ``companies``, deriving the SIC code arrays and the previous-names
JSON on the way. The staging table lives for one transaction (``ON COMMIT DROP``), so
a pooled connection is handed back exactly as it was lent.

Re-importing upserts on ``company_number`` and writes only the Companies House
columns: enrichment columns (website, tech stack, scores, ...) survive, and rows whose
Companies House data did not change are not rewritten at all.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[Any]

# Any fixed number will do; it only has to be the same for every importer.
_IMPORT_LOCK_KEY = 0x434F_4D50_414E_4945  # "COMPANIE"

STAGING_TABLE = "companies_import_staging"

# The staging columns, in the CSV's order (BasicCompanyData has 55 fields).
_DATE = "text CHECK ({col} LIKE '__/__/____')"  # DD/MM/YYYY; the cast happens on insert
_STAGING_DEFINITION: tuple[tuple[str, str], ...] = (
    ("name", "text"),
    ("company_number", "text"),
    ("care_of", "text"),
    ("po_box", "text"),
    ("address_line1", "text"),
    ("address_line2", "text"),
    ("post_town", "text"),
    ("county", "text"),
    ("country", "text"),
    ("postcode", "text"),
    ("category", "text"),
    ("status", "text"),
    ("country_of_origin", "text"),
    ("dissolution_date", _DATE),
    ("incorporation_date", _DATE),
    ("accounts_ref_day", "int"),
    ("accounts_ref_month", "int"),
    ("accounts_next_due", _DATE),
    ("accounts_last_made_up", _DATE),
    ("accounts_category", "text"),
    ("returns_next_due", _DATE),
    ("returns_last_made_up", _DATE),
    ("mortgages_charges", "int"),
    ("mortgages_outstanding", "int"),
    ("mortgages_part_satisfied", "int"),
    ("mortgages_satisfied", "int"),
    ("sic_text_1", "text"),
    ("sic_text_2", "text"),
    ("sic_text_3", "text"),
    ("sic_text_4", "text"),
    ("lp_general_partners", "int"),
    ("lp_limited_partners", "int"),
    ("uri", "text"),
    *(
        column
        for i in range(1, 11)
        for column in ((f"previous_name_{i}_date", _DATE), (f"previous_name_{i}", "text"))
    ),
    ("conf_stmt_next_due", _DATE),
    ("conf_stmt_last_made_up", _DATE),
)
STAGING_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _STAGING_DEFINITION)

_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE {STAGING_TABLE} ("
    + ", ".join(f"{name} {kind.format(col=name)}" for name, kind in _STAGING_DEFINITION)
    + ") ON COMMIT DROP"
)

# CSV as the file has it; FORCE_NULL makes the file's quoted empty fields ("") NULL.
COPY_STAGING = (
    f"COPY {STAGING_TABLE} FROM STDIN (FORMAT csv, ENCODING 'UTF8', "
    f"FORCE_NULL ({', '.join(STAGING_COLUMNS)}))"
)

# The Companies House columns of `companies`, and how each comes out of staging.
# A SIC field reads "62012 - Business and domestic software development", or
# "None Supplied": only fields with a code count, for the codes and for the texts.
_SIC_FIELDS = ("sic_text_1", "sic_text_2", "sic_text_3", "sic_text_4")
_HAS_CODE = "substr({f}, 6, 3) = ' - '"
_SIC_CODES = (
    "array_remove(ARRAY["
    + ", ".join(f"CASE WHEN {_HAS_CODE.format(f=f)} THEN left({f}, 5) END" for f in _SIC_FIELDS)
    + "], NULL)"
)
_SIC_TEXTS = (
    "array_remove(ARRAY["
    + ", ".join(f"CASE WHEN {_HAS_CODE.format(f=f)} THEN {f} END" for f in _SIC_FIELDS)
    + "], NULL)"
)
# Most companies never changed name: skip the subquery for them.
_PREVIOUS_NAMES = (
    "CASE WHEN previous_name_1 IS NULL THEN '[]'::jsonb ELSE ("
    "SELECT coalesce(jsonb_agg(jsonb_build_object('name', n, 'changed_on', d::date) "
    "ORDER BY i), '[]') FROM (VALUES "
    + ", ".join(f"({i}, previous_name_{i}, previous_name_{i}_date)" for i in range(1, 11))
    + ") AS p (i, n, d) WHERE n IS NOT NULL) END"
)
_CH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("company_number", "company_number"),
    ("name", "name"),
    ("care_of", "care_of"),
    ("po_box", "po_box"),
    ("address_line1", "address_line1"),
    ("address_line2", "address_line2"),
    ("post_town", "post_town"),
    ("county", "county"),
    ("country", "country"),
    ("postcode", "postcode"),
    ("category", "category"),
    ("status", "status"),
    ("country_of_origin", "country_of_origin"),
    ("dissolution_date", "dissolution_date::date"),
    ("incorporation_date", "incorporation_date::date"),
    ("accounts_ref_day", "accounts_ref_day"),
    ("accounts_ref_month", "accounts_ref_month"),
    ("accounts_next_due", "accounts_next_due::date"),
    ("accounts_last_made_up", "accounts_last_made_up::date"),
    ("accounts_category", "accounts_category"),
    ("returns_next_due", "returns_next_due::date"),
    ("returns_last_made_up", "returns_last_made_up::date"),
    ("mortgages_charges", "mortgages_charges"),
    ("mortgages_outstanding", "mortgages_outstanding"),
    ("mortgages_part_satisfied", "mortgages_part_satisfied"),
    ("mortgages_satisfied", "mortgages_satisfied"),
    ("sic_codes", _SIC_CODES),
    ("sic_texts", _SIC_TEXTS),
    ("lp_general_partners", "lp_general_partners"),
    ("lp_limited_partners", "lp_limited_partners"),
    ("uri", "uri"),
    ("previous_names", _PREVIOUS_NAMES),
    ("conf_stmt_next_due", "conf_stmt_next_due::date"),
    ("conf_stmt_last_made_up", "conf_stmt_last_made_up::date"),
)
# The columns an import owns; everything else in `companies` (enrichment, id, org_id,
# created_at) is left alone by a re-import.
IMPORTED_COLUMNS: tuple[str, ...] = tuple(column for column, _ in _CH_COLUMNS)

_INSERT = (
    f"INSERT INTO companies ({', '.join(IMPORTED_COLUMNS)}) "
    f"SELECT {', '.join(expression for _, expression in _CH_COLUMNS)} FROM {STAGING_TABLE}"
)
_SAME = (
    f"({', '.join('companies.' + c for c in IMPORTED_COLUMNS[1:])}) IS NOT DISTINCT FROM "
    f"({', '.join('incoming.' + c for c in IMPORTED_COLUMNS[1:])})"
)
_UPSERT = (
    "WITH incoming AS ("
    f"SELECT {', '.join(f'{e} AS {c}' for c, e in _CH_COLUMNS)} FROM {STAGING_TABLE}), "
    f"written AS (INSERT INTO companies ({', '.join(IMPORTED_COLUMNS)}) "
    f"SELECT {', '.join(IMPORTED_COLUMNS)} FROM incoming "
    # Rows already there and unchanged (most of a monthly re-import) are dropped by a
    # read-only probe: ON CONFLICT would lock each one, writing to every heap page.
    "WHERE NOT EXISTS (SELECT FROM companies WHERE "
    f"companies.company_number = incoming.company_number AND {_SAME}) "
    "ON CONFLICT (company_number) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in IMPORTED_COLUMNS[1:])
    + ", imported_at = now(), updated_at = now() "
    # The probe and the insert are not atomic: a row another writer stored meanwhile
    # is rewritten only if it differs.
    f"WHERE NOT ({_SAME.replace('incoming.', 'EXCLUDED.')}) "
    # xmax is 0 on a freshly inserted row version and set on an updated one.
    "RETURNING xmax = 0 AS inserted) "
    "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) "
    "FROM written"
)


async def create_staging(conn: Conn) -> None:
    """The staging table for one batch; call inside the batch's transaction."""
    # The file's dates are DD/MM/YYYY; the staging check has vetted the shape.
    await conn.execute("SELECT set_config('datestyle', 'ISO, DMY', true)")
    await conn.execute(_CREATE_STAGING)


async def upsert_staged(conn: Conn) -> tuple[int, int]:
    """Move the staged batch into ``companies``. Returns (inserted, updated)."""
    cursor = await conn.execute(_UPSERT)  # built from constants only
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def insert_staged(conn: Conn) -> int:
    """Insert the staged batch, with no conflict handling: for the first load of an
    empty table, where a conflict (the file repeats a company number) is an error the
    caller answers by upserting the batch instead. Returns rows inserted."""
    cursor = await conn.execute(_INSERT)  # built from constants only
    return cursor.rowcount


async def lock_imports(conn: Conn) -> None:
    """One import at a time (per database): a session lock, held across the import's
    many transactions on this connection."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (_IMPORT_LOCK_KEY,))


async def unlock_imports(conn: Conn) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", (_IMPORT_LOCK_KEY,))


async def is_empty(conn: Conn) -> bool:
    cursor = await conn.execute("SELECT NOT EXISTS (SELECT 1 FROM companies)")
    row = await cursor.fetchone()
    return bool(row and row[0])


# Secondary indexes (not the primary key nor a unique index: upserts need the unique
# one, and other tables' foreign keys need the primary key) and foreign keys of
# `companies`, as DDL that recreates them.
_DEFERRABLE_DDL = """
SELECT c.relname, pg_get_indexdef(i.indexrelid), 'index'
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'companies'::regclass AND NOT i.indisprimary AND NOT i.indisunique
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
UNION ALL
SELECT k.conname,
       format('ALTER TABLE companies ADD CONSTRAINT %I ', k.conname)
           || pg_get_constraintdef(k.oid),
       'constraint'
FROM pg_constraint k
WHERE k.conrelid = 'companies'::regclass AND k.contype = 'f'
"""


async def defer_secondary_ddl(conn: Conn) -> list[str]:
    """For the first load of an empty ``companies``: save and drop its secondary
    indexes and foreign keys, so the load maintains none of them row by row.
    :func:`restore_ddl` rebuilds them. Returns what was set aside; nothing
    when the table turns out not to be empty (another writer got there first).

    Runs in one transaction: the definitions are on record in
    ``companies_import_deferred_ddl`` exactly when the objects are gone.
    """
    async with conn.transaction():
        # The table stays locked only for this short transaction: DROP INDEX needs it.
        await conn.execute("LOCK TABLE companies IN ACCESS EXCLUSIVE MODE")
        if not await is_empty(conn):
            return []
        cursor = await conn.execute(_DEFERRABLE_DDL)
        found = await cursor.fetchall()
        for name, ddl, kind in found:
            await conn.execute(
                "INSERT INTO companies_import_deferred_ddl (name, ddl) VALUES (%s, %s)",
                (name, ddl),
            )
            if kind == "index":
                await conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
            else:
                await conn.execute(
                    sql.SQL("ALTER TABLE companies DROP CONSTRAINT {}").format(
                        sql.Identifier(name)
                    )
                )
        return [name for name, _, _ in found]


async def deferred_ddl(conn: Conn) -> list[tuple[str, str]]:
    """What :func:`defer_secondary_ddl` set aside and is still to rebuild (by this
    import, or by one that died): (name, ddl) pairs."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT name, ddl FROM companies_import_deferred_ddl ORDER BY deferred_at, name"
        )
        return [(str(name), str(ddl)) for name, ddl in await cursor.fetchall()]


async def restore_ddl(conn: Conn, name: str, ddl: str) -> None:
    """Rebuild one index or constraint set aside, and strike it off the record, in one
    transaction. Several can run at once on different connections (index builds share
    the table)."""
    async with conn.transaction():
        cursor = await conn.execute(
            "SELECT 1 FROM companies_import_deferred_ddl WHERE name = %s FOR UPDATE SKIP LOCKED",
            (name,),
        )
        if await cursor.fetchone() is None:
            return  # rebuilt meanwhile by someone else
        # Index builds sort; more memory than the default means fewer passes on disk.
        await conn.execute("SELECT set_config('maintenance_work_mem', '256MB', true)")
        # The text comes from pg_get_indexdef / pg_get_constraintdef, not from input.
        await conn.execute(sql.SQL(ddl))
        await conn.execute("DELETE FROM companies_import_deferred_ddl WHERE name = %s", (name,))


# Live discovery (opportunity_bot) --------------------------------------------------------

# The columns a Companies House advanced-search hit can fill (agents/opportunity_bot.py
# maps a hit onto them); the rest of the row keeps its defaults until an import or an
# enrichment writes it.
SEARCH_HIT_COLUMNS: tuple[str, ...] = (
    "id", "company_number", "name", "status", "category", "incorporation_date",
    "dissolution_date", "address_line1", "address_line2", "post_town", "county", "country",
    "postcode", "sic_codes",
)
_SEARCH_HIT_TYPES = {
    "id": "uuid", "incorporation_date": "date", "dissolution_date": "date",
    "sic_codes": "text[]",
}


async def insert_search_hits(
    conn: Conn, org_id: Any, hits: list[dict[str, Any]]
) -> dict[str, Any]:
    """Add the hits that are not in ``companies`` yet (by company number) to
    ``org_id``; a row already there, imported or found before, is left exactly as it
    is. Returns company_number -> id for the hits' numbers that are the organization's
    companies now. Run inside a transaction: the opportunity bot's commit hook, or its
    rolled-back preview. Rows are inserted in company-number order, so two runs adding
    overlapping hits lock them in the same order."""
    if not hits:
        return {}
    ordered = sorted(hits, key=lambda hit: str(hit["company_number"]))
    columns = ", ".join(SEARCH_HIT_COLUMNS)
    record = ", ".join(f"{c} {_SEARCH_HIT_TYPES.get(c, 'text')}" for c in SEARCH_HIT_COLUMNS)
    await conn.execute(
        f"INSERT INTO companies (org_id, {columns}) "
        f"SELECT %(org_id)s, {columns} "
        f"FROM jsonb_to_recordset(%(hits)s::jsonb) AS x({record}) "
        "ON CONFLICT (company_number) DO NOTHING",
        {"org_id": org_id, "hits": Jsonb(ordered)},
    )
    cur = await conn.execute(
        "SELECT company_number, id FROM companies "
        "WHERE org_id = %(org_id)s AND company_number = ANY(%(numbers)s::text[])",
        {"org_id": org_id, "numbers": [hit["company_number"] for hit in ordered]},
    )
    return {number: company_id for number, company_id in await cur.fetchall()}
