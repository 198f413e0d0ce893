"""The SQL behind ``opportunity_bot`` and ``scoring_agent``: streams and their items.

Scoring is set-based: one statement scores every item of a stream (or every candidate
company) with the formula of ``agents/lead_scoring.py`` written in SQL, so a 100 000
item stream scores in seconds. The statements share one chain of CTEs,
:data:`_SCORE_CHAIN`, over a relation ``src`` that each statement defines (stream items
joined to their companies, or candidate companies). The chain reads these named
parameters, built by ``lead_scoring.sql_parameters``:

* ``today`` - the date every date rule uses;
* ``has_industry``, ``industry_codes``, ``industry_divisions`` - the industry criterion;
* ``has_location``, ``loc_countries``, ``loc_postcode_countries``, ``loc_areas``,
  ``loc_towns``, ``loc_counties``, ``uk_generic`` - the location criterion
  (``taxonomy.LocationFilter``);
* ``has_employees``, ``employees_min``, ``employees_max`` - the employee range;
  ``size_categories`` / ``size_estimates`` - the accounts-category size bands;
* ``criteria_count``, ``criteria_weight``, ``unfiled_categories``;
* ``strength_<signal>``, ``recent_incorporation_days``, ``recent_rebrand_days``,
  ``headcount_growth_pct``, ``external_strength``, ``derived_source``,
  ``rule_covered_types`` - buying signals;
* ``critical_at``, ``high_at``, ``medium_at``, ``min_quality_score`` - bands;
* ``scored_by`` - recorded in score_details.

Writes (:func:`insert_items`, :func:`apply_scores`) run only inside the executor's
finishing transaction, through the agents' commit hooks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[Any]


def _place_key(column: str) -> str:
    """SQL twin of ``taxonomy.place_key``."""
    return f"regexp_replace(upper(coalesce({column}, '')), '[^A-Z0-9]', '', 'g')"


def _postcode_area(column: str) -> str:
    """SQL twin of ``taxonomy.postcode_area``."""
    return f"substring(upper(btrim(coalesce({column}, ''))) FROM '^[A-Z]{{1,2}}')"


def _industry_match(row: str) -> str:
    """SQL twin of ``taxonomy.IndustryFilter.matches``."""
    return f"""(
        coalesce({row}.sic_codes && %(industry_codes)s::text[], false)
        OR (cardinality(%(industry_divisions)s::text[]) > 0
            AND EXISTS (SELECT 1 FROM unnest({row}.sic_codes) AS code
                        WHERE left(code, 2) = ANY(%(industry_divisions)s::text[]))))"""


def _location_match(row: str, country_key: str, area: str) -> str:
    """SQL twin of ``taxonomy.LocationFilter.matches``."""
    return f"""(
        {country_key} = ANY(%(loc_countries)s::text[])
        OR (({country_key} = '' OR {country_key} = ANY(%(uk_generic)s::text[])
             OR {country_key} = ANY(%(loc_postcode_countries)s::text[]))
            AND {area} = ANY(%(loc_areas)s::text[]))
        OR (cardinality(%(loc_towns)s::text[]) > 0
            AND {_place_key(row + '.post_town')} = ANY(%(loc_towns)s::text[]))
        OR (cardinality(%(loc_counties)s::text[]) > 0
            AND {_place_key(row + '.county')} = ANY(%(loc_counties)s::text[])))"""


def _size_estimate(row: str) -> str:
    """The accounts-category estimate (``taxonomy.category_estimate``)."""
    return (f"(%(size_estimates)s::int[])[array_position(%(size_categories)s::text[], "
            f"upper(btrim({row}.accounts_category)))]")


# The companies columns the formula reads, with the two that clash with stream_items
# columns renamed.
_COMPANY_COLUMNS = """
    c.id AS company_id, c.name, c.status, c.address_line1, c.post_town, c.county,
    c.country, c.postcode, c.sic_codes, c.incorporation_date, c.accounts_category,
    c.accounts_last_made_up, c.accounts_next_due, c.conf_stmt_last_made_up,
    c.mortgages_charges, c.mortgages_outstanding, c.previous_names, c.website,
    c.employee_estimate, c.employee_growth_pct, c.tech_stack, c.officers_count,
    c.social_score, c.enrichment_status AS company_enrichment_status,
    c.buying_signals AS company_signals
"""


def _signal(q: str, kind: str, detail: str) -> str:
    """One derived signal as JSON text, or NULL when its rule did not fire.

    Text, parsed once per row by :func:`_derived_signals`: at 100 000 items that
    cost 0.9 s of server CPU against 1.5 s for a jsonb_build_object per signal.
    Every value goes through to_json, which does the quoting and escaping (for the
    constant ones at plan time)."""
    return (f"CASE WHEN {q}.sig_{kind} THEN '{{\"type\": ' || to_json('{kind}'::text) "
            f"|| ', \"strength\": ' || to_json(%(strength_{kind})s::numeric) "
            f"|| ', \"source\": ' || to_json(%(derived_source)s::text) "
            f"|| ', \"detail\": ' || to_json({detail}) || '}}' END")


def _iso(column: str) -> str:
    # to_char, not ::text, so that the session's DateStyle cannot change the text
    return f"to_char({column}, 'YYYY-MM-DD')"


# The formula, over ``src`` (one row per company to score; columns: item_id,
# item_enrichment_status, prev_details, item_signals and _COMPANY_COLUMNS). Ends in
# ``banded``: every sub-score, the score, priority, qualified, derived signals and
# score_details of each row.
#
# Every step ends in OFFSET 0, an optimisation fence. Without it PostgreSQL flattens
# the inlined CTEs and substitutes each column's expression wherever it is used, so
# quality_score (used seven times in ``banded``) would repeat the whole formula, its
# subqueries included, seven times per row. With the fences each step is computed once
# per row, nothing is materialised, and columns no later step reads are not computed.
_SCORE_CHAIN = f"""
facts AS (
    SELECT src.*,
           {_size_estimate('src')} AS category_employees,
           {_place_key('src.country')} AS country_key,
           {_postcode_area('src.postcode')} AS area,
           upper(btrim(coalesce(src.accounts_category, ''))) AS category,
           CASE WHEN jsonb_typeof(src.company_signals) = 'array'
                THEN src.company_signals ELSE '[]'::jsonb END AS company_signal_list,
           -- Signals other agents put on the item survive a rescoring; the rules' own
           -- (source 'derived') are recomputed.
           CASE WHEN jsonb_typeof(src.item_signals) = 'array'
                     AND src.item_signals <> '[]'::jsonb
                THEN jsonb_path_query_array(
                         src.item_signals, '$[*] ? (!exists(@.source ? (@ == $derived)))',
                         jsonb_build_object('derived', %(derived_source)s::text))
                ELSE '[]'::jsonb END AS kept_item_signals,
           CASE WHEN jsonb_typeof(src.prev_details -> 'category_employees') = 'number'
                THEN (src.prev_details ->> 'category_employees')::numeric
           END AS prev_category_employees,
           CASE WHEN jsonb_typeof(src.prev_details -> 'mortgages_charges') = 'number'
                THEN (src.prev_details ->> 'mortgages_charges')::numeric
           END AS prev_charges
    FROM src
    OFFSET 0
),
checks AS (
    SELECT f.*,
           coalesce(f.employee_estimate, f.category_employees) AS employees,
           upper(btrim(coalesce(f.status, ''))) = 'ACTIVE' AS active,
           CASE WHEN %(has_industry)s THEN
               CASE WHEN {_industry_match('f')} THEN 1 ELSE 0 END
           END AS industry_credit,
           CASE WHEN %(has_location)s THEN
               CASE WHEN {_location_match('f', 'f.country_key', 'f.area')} THEN 1 ELSE 0 END
           END AS location_credit,
           CASE WHEN %(has_employees)s THEN
               CASE WHEN coalesce(f.employee_estimate, f.category_employees) IS NULL THEN 0.5
                    WHEN coalesce(f.employee_estimate, f.category_employees)
                         BETWEEN %(employees_min)s::int AND %(employees_max)s::int
                    THEN 1 ELSE 0 END
           END AS employee_credit,
           coalesce(f.incorporation_date > %(today)s::date - %(recent_incorporation_days)s::int
                    AND f.incorporation_date <= %(today)s::date, false)
               AS sig_recent_incorporation,
           coalesce(f.category_employees > f.prev_category_employees, false)
               AS sig_accounts_category_upgrade,
           coalesce(coalesce(f.mortgages_charges, 0) > f.prev_charges, false) AS sig_new_charge,
           coalesce(f.mortgages_outstanding, 0) > 0 AS sig_outstanding_charges,
           coalesce(f.employee_growth_pct >= %(headcount_growth_pct)s::numeric, false)
               AS sig_headcount_growth,
           renamed.latest AS latest_rename,
           coalesce(renamed.latest > to_char(%(today)s::date - %(recent_rebrand_days)s::int,
                                             'YYYY-MM-DD')
                    AND renamed.latest <= to_char(%(today)s::date, 'YYYY-MM-DD'), false)
               AS sig_recent_rebrand,
           coalesce(f.accounts_last_made_up IS NOT NULL
                    AND f.accounts_next_due >= %(today)s::date, false)
               AS sig_accounts_filed_on_time,
           external.n AS external_count
    FROM facts f
    -- Dates are compared as ISO text in the C collation (plain code-point order, as in
    -- Python), so a malformed date in imported JSON cannot make the cast fail.
    CROSS JOIN LATERAL (
        SELECT CASE WHEN jsonb_typeof(f.previous_names) = 'array'
                         AND f.previous_names <> '[]'::jsonb THEN (
            SELECT max(left(d.value, 10) COLLATE "C")
            FROM jsonb_array_elements(f.previous_names) AS e(entry)
            CROSS JOIN LATERAL (
                -- lead_scoring.PREVIOUS_NAME_DATE_KEYS, in the same order
                SELECT coalesce(e.entry ->> 'changed_on', e.entry ->> 'ceased_on',
                                e.entry ->> 'condate', e.entry ->> 'date') AS value
            ) AS d
            WHERE d.value ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}'
        ) END AS latest
    ) AS renamed
    CROSS JOIN LATERAL (
        SELECT CASE WHEN f.company_signal_list = '[]'::jsonb
                         AND f.kept_item_signals = '[]'::jsonb THEN 0 ELSE (
            SELECT count(DISTINCT k.key)
            FROM jsonb_array_elements(f.company_signal_list || f.kept_item_signals)
                 AS e(entry)
            CROSS JOIN LATERAL (
                SELECT coalesce(e.entry ->> 'type', e.entry ->> 'signal',
                                e.entry #>> '{{}}') AS key
            ) AS k
            -- not written by the rules, not of a type a rule derives
            WHERE e.entry ->> 'source' IS DISTINCT FROM %(derived_source)s::text
              AND k.key <> ALL(%(rule_covered_types)s::text[])
        ) END AS n
    ) AS external
    OFFSET 0
),
scored AS (
    SELECT c.*,
           CASE WHEN NOT c.active THEN 0::numeric
                WHEN %(criteria_count)s::int = 0 THEN 1::numeric
                ELSE round((coalesce(c.industry_credit, 0) + coalesce(c.location_credit, 0)
                            + coalesce(c.employee_credit, 0))::numeric
                           / nullif(%(criteria_count)s::int, 0), 4)
           END AS criteria_match,
           round(((nullif(btrim(c.name), '') IS NOT NULL)::int
                  + (nullif(btrim(c.address_line1), '') IS NOT NULL)::int
                  + (nullif(btrim(c.post_town), '') IS NOT NULL)::int
                  + (nullif(btrim(c.postcode), '') IS NOT NULL)::int
                  + (nullif(btrim(c.country), '') IS NOT NULL)::int
                  + (coalesce(cardinality(c.sic_codes), 0) > 0)::int
                  + (c.incorporation_date IS NOT NULL)::int
                  + (c.category <> ''
                     AND NOT c.category = ANY(%(unfiled_categories)s::text[]))::int
                  + (c.accounts_last_made_up IS NOT NULL)::int
                  + (c.conf_stmt_last_made_up IS NOT NULL)::int)::numeric / 10, 4)
               AS data_completeness,
           round(((coalesce(c.item_enrichment_status = 'enriched', false)
                   OR coalesce(c.company_enrichment_status = 'enriched', false))::int
                  + (nullif(btrim(c.website), '') IS NOT NULL)::int
                  + (coalesce(cardinality(c.tech_stack), 0) > 0)::int
                  + (coalesce(c.officers_count, 0) > 0)::int
                  + (coalesce(c.social_score, 0) > 0)::int)::numeric / 5, 4)
               AS enrichment_quality,
           (CASE WHEN c.sig_recent_incorporation
                 THEN %(strength_recent_incorporation)s::numeric ELSE 0 END
            + CASE WHEN c.sig_accounts_category_upgrade
                   THEN %(strength_accounts_category_upgrade)s::numeric ELSE 0 END
            + CASE WHEN c.sig_new_charge THEN %(strength_new_charge)s::numeric ELSE 0 END
            + CASE WHEN c.sig_outstanding_charges
                   THEN %(strength_outstanding_charges)s::numeric ELSE 0 END
            + CASE WHEN c.sig_headcount_growth
                   THEN %(strength_headcount_growth)s::numeric ELSE 0 END
            + CASE WHEN c.sig_recent_rebrand THEN %(strength_recent_rebrand)s::numeric ELSE 0 END
            + CASE WHEN c.sig_accounts_filed_on_time
                   THEN %(strength_accounts_filed_on_time)s::numeric ELSE 0 END)
               AS derived_total
    FROM checks c
    OFFSET 0
),
rated AS (
    SELECT s.*,
           round(least(1::numeric, s.derived_total
                       + %(external_strength)s::numeric * s.external_count), 4)
               AS buying_signal_score
    FROM scored s
    OFFSET 0
),
totalled AS (
    SELECT r.*,
           -- raw / 5 x 5 = raw: the weights sum to 5, so only clamp and round
           round(least(5::numeric, greatest(0::numeric,
                 %(criteria_weight)s::numeric * r.criteria_match + r.data_completeness
                 + r.enrichment_quality + r.buying_signal_score)), 2) AS quality_score
    FROM rated r
    OFFSET 0
),
banded AS (
    SELECT q.*,
           CASE WHEN q.quality_score >= %(critical_at)s::numeric THEN 'critical'
                WHEN q.quality_score >= %(high_at)s::numeric THEN 'high'
                WHEN q.quality_score >= %(medium_at)s::numeric THEN 'medium'
                ELSE 'low' END AS priority,
           CASE WHEN q.quality_score >= %(critical_at)s::numeric THEN 1
                WHEN q.quality_score >= %(high_at)s::numeric THEN 2
                WHEN q.quality_score >= %(medium_at)s::numeric THEN 3
                ELSE 4 END AS priority_rank,
           q.quality_score >= %(min_quality_score)s::numeric AS qualified
    FROM totalled q
)
"""


def _derived_signals(q: str) -> str:
    """The derived signals of a ``banded`` row as a jsonb array, in rule order
    (concat_ws skips the NULLs of the rules that did not fire)."""
    return f"""('[' || concat_ws(', ',
        {_signal(q, 'recent_incorporation',
                 "'incorporated on ' || " + _iso(q + '.incorporation_date'))},
        {_signal(q, 'accounts_category_upgrade',
                 f"'accounts category ' || {q}.category || ' implies about ' "
                 f"|| {q}.category_employees || ' employees, ' "
                 f"|| {q}.prev_category_employees || ' when last scored'")},
        {_signal(q, 'new_charge',
                 f"coalesce({q}.mortgages_charges, 0) || ' charges registered, ' "
                 f"|| {q}.prev_charges || ' when last scored'")},
        {_signal(q, 'outstanding_charges',
                 f"{q}.mortgages_outstanding || ' outstanding charges'")},
        {_signal(q, 'headcount_growth',
                 f"'employee growth ' || {q}.employee_growth_pct || ' %%'")},
        {_signal(q, 'recent_rebrand', f"'renamed on ' || {q}.latest_rename")},
        {_signal(q, 'accounts_filed_on_time',
                 "'accounts made up to ' || " + _iso(q + '.accounts_last_made_up')
                 + " || ', next due ' || " + _iso(q + '.accounts_next_due'))}
    ) || ']')::jsonb"""


def _score_details(q: str) -> str:
    """How a ``banded`` row's score came about, and the figures the next scoring
    compares with to see growth (``category_employees``, ``mortgages_charges``; see
    lead_scoring.SIGNAL_RULES). The sub-scores have their own columns."""
    return f"""jsonb_build_object(
        'scored_by', %(scored_by)s::text,
        'criteria', jsonb_build_object(
            'active', {q}.active, 'industry', {q}.industry_credit,
            'location', {q}.location_credit, 'employees', {q}.employee_credit),
        'employees', {q}.employees,
        'employees_basis', CASE WHEN {q}.employee_estimate IS NOT NULL THEN 'enrichment'
                                WHEN {q}.category_employees IS NOT NULL
                                THEN 'accounts_category' END,
        'external_signal_count', {q}.external_count,
        'accounts_category', nullif({q}.category, ''),
        'category_employees', {q}.category_employees,
        'mortgages_charges', coalesce({q}.mortgages_charges, 0))"""


_ITEMS_SRC = f"""
src AS (
    SELECT si.id AS item_id, si.enrichment_status AS item_enrichment_status,
           si.score_details AS prev_details, si.buying_signals AS item_signals,
           {_COMPANY_COLUMNS}
    FROM stream_items si
    JOIN companies c ON c.id = si.company_id
    WHERE si.stream_id = %(stream_id)s
)
"""

# Candidates are filtered in ``src`` itself (not after scoring) so that only matching
# companies are scored. The same match fragments as in the chain, so a company found
# here meets the industry and location criteria there. An unknown headcount does not
# exclude a company (the score marks it down instead): exclusion needs evidence.
_CANDIDATES_SRC = f"""
src AS (
    SELECT NULL::uuid AS item_id, 'pending'::text AS item_enrichment_status,
           '{{}}'::jsonb AS prev_details, '[]'::jsonb AS item_signals,
           {_COMPANY_COLUMNS}
    FROM companies c
    WHERE c.org_id = %(org_id)s
      AND upper(btrim(coalesce(c.status, ''))) = 'ACTIVE'
      AND (NOT %(has_industry)s OR {_industry_match('c')})
      AND (NOT %(has_location)s
           OR {_location_match('c', _place_key('c.country'), _postcode_area('c.postcode'))})
      AND (NOT %(has_employees)s
           OR coalesce(c.employee_estimate, {_size_estimate('c')}) IS NULL
           OR coalesce(c.employee_estimate, {_size_estimate('c')})
              BETWEEN %(employees_min)s::int AND %(employees_max)s::int)
      AND NOT EXISTS (SELECT 1 FROM stream_items si
                      WHERE si.stream_id = %(stream_id)s AND si.company_id = c.id)
)
"""

# What the steps after ``banded`` read. Listed rather than ``banded.*``: the planner
# keeps every column of a subquery with a window function, and sorting the full rows
# (about 850 bytes each) spilled to disk.
_RESULT_COLUMNS = ", ".join(f"{{row}}.{column}" for column in (
    "item_id", "company_id", "name", "criteria_match", "data_completeness",
    "enrichment_quality", "buying_signal_score", "quality_score", "priority",
    "priority_rank", "qualified", "kept_item_signals",
    # score_details
    "active", "industry_credit", "location_credit", "employee_credit", "employees",
    "employee_estimate", "category_employees", "external_count", "category",
    "mortgages_charges",
    # derived signals
    "sig_recent_incorporation", "sig_accounts_category_upgrade", "sig_new_charge",
    "sig_outstanding_charges", "sig_headcount_growth", "sig_recent_rebrand",
    "sig_accounts_filed_on_time", "incorporation_date", "prev_category_employees",
    "prev_charges", "mortgages_outstanding", "employee_growth_pct", "latest_rename",
    "accounts_last_made_up", "accounts_next_due",
))


def _result_columns(row: str) -> str:
    return _RESULT_COLUMNS.replace("{row}", row)


# Scored, ranked and cut to the best ``limit`` before the jsonb columns are built, so
# only the rows returned pay for them.
_FIND_CANDIDATES = f"""
WITH {_CANDIDATES_SRC}, {_SCORE_CHAIN}
SELECT b.company_id, b.name, b.criteria_match, b.data_completeness, b.enrichment_quality,
       b.buying_signal_score, b.quality_score, b.priority, b.qualified, b.found,
       {_derived_signals('b')} AS derived_signals,
       {_score_details('b')} AS score_details
FROM (
    SELECT {_result_columns('banded')}, count(*) OVER () AS found
    FROM banded
    ORDER BY quality_score DESC, name COLLATE "C", company_id
    LIMIT %(limit)s
) AS b
ORDER BY b.quality_score DESC, b.name COLLATE "C", b.company_id
"""

_SUMMARY = """
SELECT count(*) AS items,
       coalesce(round(avg(quality_score), 2), 0) AS avg_quality_score,
       count(*) FILTER (WHERE quality_score >= %(high_at)s::numeric) AS high_quality
"""

# Positions: best first, by priority then score; ties by company name (byte order: the
# same everywhere, and cheaper than the database collation) and id, so that the order
# is the same on every run. The window sorts the scalar results only; the
# jsonb columns are built after it, row by row, as the UPDATE consumes them.
_APPLY_SCORES = f"""
WITH {_ITEMS_SRC}, {_SCORE_CHAIN},
ranked AS (
    SELECT {_result_columns('b')}, row_number() OVER (
               ORDER BY b.priority_rank, b.quality_score DESC, b.name COLLATE "C", b.company_id
           ) AS position
    FROM banded b
),
updated AS (
    UPDATE stream_items AS si
    SET criteria_match = r.criteria_match,
        data_completeness = r.data_completeness,
        enrichment_quality = r.enrichment_quality,
        buying_signal_score = r.buying_signal_score,
        quality_score = r.quality_score,
        priority = r.priority,
        position = r.position,
        qualified = r.qualified,
        score_details = {_score_details('r')},
        buying_signals = {_derived_signals('r')} || r.kept_item_signals,
        scored_at = now(),
        updated_at = now()
    FROM ranked r
    WHERE si.id = r.item_id
    RETURNING si.quality_score
)
{_SUMMARY}
FROM updated
"""


@dataclasses.dataclass(frozen=True, slots=True)
class StreamRow:
    id: UUID
    org_id: UUID
    name: str
    goal_criteria: Mapping[str, Any]
    target_metrics: Mapping[str, Any]
    #: the database's current_date, read with the stream
    today: dt.date


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    company_id: UUID
    name: str
    criteria_match: Decimal
    data_completeness: Decimal
    enrichment_quality: Decimal
    buying_signal_score: Decimal
    quality_score: Decimal
    priority: str
    qualified: bool
    buying_signals: list[Any]
    score_details: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ScoreSummary:
    items: int
    avg_quality_score: Decimal
    high_quality: int


async def fetch_stream(conn: Conn, stream_id: UUID) -> StreamRow | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, org_id, name, goal_criteria, target_metrics, current_date AS today "
            "FROM streams WHERE id = %s",
            (stream_id,),
        )
        row = await cur.fetchone()
    return None if row is None else StreamRow(**row)


async def find_places(
    conn: Conn, org_id: UUID, keys: Sequence[str]
) -> dict[str, tuple[bool, bool]]:
    """For each place key, whether some company of the organization has it as its post
    town, and as its county (keys as ``taxonomy.place_key`` makes them)."""
    if not keys:
        return {}
    cur = await conn.execute(
        f"""
        SELECT k.key,
               EXISTS (SELECT 1 FROM companies c WHERE c.org_id = %(org_id)s
                       AND {_place_key('c.post_town')} = k.key),
               EXISTS (SELECT 1 FROM companies c WHERE c.org_id = %(org_id)s
                       AND {_place_key('c.county')} = k.key)
        FROM unnest(%(keys)s::text[]) AS k(key)
        """,
        {"org_id": org_id, "keys": list(keys)},
    )
    return {key: (bool(town), bool(county)) for key, town, county in await cur.fetchall()}


async def find_candidates(
    conn: Conn, *, stream_id: UUID, org_id: UUID, limit: int, parameters: Mapping[str, Any]
) -> tuple[int, list[Candidate]]:
    """Active companies of the organization that meet the goal's industry, location and
    employee criteria and are not in the stream yet: how many there are, and the best
    ``limit`` of them, scored, best first."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await _scoring_settings(conn)
        await cur.execute(
            _FIND_CANDIDATES,
            {**parameters, "stream_id": stream_id, "org_id": org_id, "limit": limit,
             "scored_by": "opportunity_bot"},
        )
        rows = await cur.fetchall()
    found = int(rows[0]["found"]) if rows else 0
    candidates = [
        Candidate(
            company_id=row["company_id"], name=row["name"],
            criteria_match=row["criteria_match"], data_completeness=row["data_completeness"],
            enrichment_quality=row["enrichment_quality"],
            buying_signal_score=row["buying_signal_score"],
            quality_score=row["quality_score"], priority=row["priority"],
            qualified=row["qualified"], buying_signals=row["derived_signals"],
            score_details=row["score_details"],
        )
        for row in rows
    ]
    return found, candidates


async def insert_items(
    conn: Conn,
    *,
    stream_id: UUID,
    org_id: UUID,
    task_id: UUID,
    execution_id: UUID,
    candidates: Sequence[Candidate],
) -> int:
    """Add the candidates to the stream (commit hook). An item already there is left
    alone, so a retried or repeated run never duplicates one. Returns the rows added."""
    if not candidates:
        return 0
    cur = await conn.execute(
        """
        INSERT INTO stream_items (
            org_id, stream_id, company_id, added_by_task_id, added_by_execution_id,
            qualified, discovery_score, quality_score, priority, criteria_match,
            data_completeness, enrichment_quality, buying_signal_score, score_details,
            buying_signals)
        SELECT %(org_id)s, %(stream_id)s, x.company_id, %(task_id)s, %(execution_id)s,
               x.qualified, x.score, x.score, x.priority, x.criteria_match,
               x.data_completeness, x.enrichment_quality, x.buying_signal_score,
               x.score_details, x.buying_signals
        FROM unnest(%(company_ids)s::uuid[], %(qualified)s::boolean[],
                    %(scores)s::numeric[], %(priorities)s::text[], %(cm)s::numeric[],
                    %(dc)s::numeric[], %(eq)s::numeric[], %(bs)s::numeric[],
                    %(details)s::jsonb[], %(signals)s::jsonb[])
             AS x(company_id, qualified, score, priority, criteria_match, data_completeness,
                  enrichment_quality, buying_signal_score, score_details, buying_signals)
        ON CONFLICT (stream_id, company_id) DO NOTHING
        """,
        {
            "org_id": org_id,
            "stream_id": stream_id,
            "task_id": task_id,
            "execution_id": execution_id,
            "company_ids": [c.company_id for c in candidates],
            "qualified": [c.qualified for c in candidates],
            "scores": [c.quality_score for c in candidates],
            "priorities": [c.priority for c in candidates],
            "cm": [c.criteria_match for c in candidates],
            "dc": [c.data_completeness for c in candidates],
            "eq": [c.enrichment_quality for c in candidates],
            "bs": [c.buying_signal_score for c in candidates],
            "details": [Jsonb(c.score_details) for c in candidates],
            "signals": [Jsonb(c.buying_signals) for c in candidates],
        },
    )
    return cur.rowcount


async def _scoring_settings(conn: Conn) -> None:
    """Settings for the rest of the current transaction, for the scoring statements.

    JIT off: these statements are hundreds of expressions over many rows, so their cost
    estimate always passes jit_above_cost, and compiling them took longer (7 s of 10 at
    20 000 items, scripts/bench_scoring.py) than running them interpreted.
    work_mem 64MB: the position window sorts a few hundred bytes per item, which
    spilled to disk with the default 4MB from about 20 000 items."""
    await conn.execute(
        "SELECT set_config('jit', 'off', true), set_config('work_mem', '64MB', true)")


def _summary(row: Mapping[str, Any] | None) -> ScoreSummary:
    assert row is not None  # an aggregate always returns a row
    return ScoreSummary(
        items=int(row["items"]), avg_quality_score=row["avg_quality_score"],
        high_quality=int(row["high_quality"]),
    )


async def apply_scores(
    conn: Conn, *, stream_id: UUID, parameters: Mapping[str, Any]
) -> ScoreSummary:
    """Score every item of the stream and renumber their positions, in one statement
    (commit hook: the caller's transaction, which keeps :func:`_scoring_settings`)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await _scoring_settings(conn)
        await cur.execute(
            _APPLY_SCORES,
            {**parameters, "stream_id": stream_id, "scored_by": "scoring_agent"},
        )
        return _summary(await cur.fetchone())


async def company_rows(conn: Conn, company_ids: Sequence[UUID]) -> dict[UUID, dict[str, Any]]:
    """The ``companies`` rows of ``company_ids`` by id (what a model is shown about a
    candidate; ``llm_judgements`` picks the facts it needs)."""
    if not company_ids:
        return {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT * FROM companies WHERE id = ANY(%s::uuid[])",
                          (list(company_ids),))
        return {row["id"]: row for row in await cur.fetchall()}


@dataclasses.dataclass(frozen=True, slots=True)
class Lead:
    """A stream item scored ``critical`` or ``high``, with what explains its score
    (``buying_signals``: the item's and its company's)."""

    item_id: UUID
    company_id: UUID
    company_number: str
    name: str
    priority: str
    quality_score: Decimal
    score_details: dict[str, Any]
    buying_signals: list[Any]
    enrichment_quality: Decimal | None
    data_completeness: Decimal | None


async def scored_leads(conn: Conn, stream_id: UUID) -> dict[UUID, str]:
    """The items a previous scoring already made ``critical`` or ``high`` (item id ->
    priority): what is not news (commit hook, before :func:`apply_scores`)."""
    cur = await conn.execute(
        "SELECT id, priority FROM stream_items WHERE stream_id = %s "
        "AND scored_at IS NOT NULL AND priority IN ('critical', 'high')",
        (stream_id,),
    )
    return {row[0]: row[1] for row in await cur.fetchall()}


async def leads(conn: Conn, stream_id: UUID) -> list[Lead]:
    """The stream's ``critical`` and ``high`` items, best first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """
            SELECT i.id AS item_id, c.id AS company_id, c.company_number, c.name,
                   i.priority, i.quality_score, i.score_details,
                   -- the item's signals and the company's (scored as external ones)
                   i.buying_signals || CASE WHEN jsonb_typeof(c.buying_signals) = 'array'
                       THEN c.buying_signals ELSE '[]'::jsonb END AS buying_signals,
                   i.enrichment_quality, i.data_completeness
            FROM stream_items i JOIN companies c ON c.id = i.company_id
            WHERE i.stream_id = %s AND i.priority IN ('critical', 'high')
            ORDER BY i.position NULLS LAST, i.quality_score DESC, c.name
            """,
            (stream_id,),
        )
        return [Lead(**row) for row in await cur.fetchall()]
