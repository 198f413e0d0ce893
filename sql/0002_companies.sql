-- Companies: what the Companies House free bulk product "BasicCompanyData" carries,
-- plus what the enrichment agent adds.
--
-- Rows are keyed by company_number and loaded by agents/companies_import.py, which
-- upserts: a re-import rewrites the Companies House columns (the first block below)
-- and never touches the enrichment columns, so an enriched company stays enriched
-- and keeps its id. Empty CSV fields are stored as NULL, not ''.

CREATE TABLE companies (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL DEFAULT runner_default_org_id() REFERENCES organizations (id),
    -- Companies House data (one column per CSV field; the importer owns these) ---------
    -- 8 characters, as the register prints them: digits, or a 2-letter prefix
    -- ('SC' Scotland, 'NI' Northern Ireland, 'OC' LLP, 'FC' overseas, ...) + 6 digits.
    company_number text NOT NULL UNIQUE
        CONSTRAINT companies_number_format CHECK (company_number ~ '^[A-Z0-9]{2}[0-9]{6}$'),
    name text NOT NULL,
    care_of text,
    po_box text,
    address_line1 text,
    address_line2 text,
    post_town text,
    county text,
    country text,
    postcode text,
    category text,                  -- e.g. 'Private Limited Company', 'PLC'
    status text,                    -- e.g. 'Active', 'Liquidation'
    country_of_origin text,
    dissolution_date date,
    incorporation_date date,
    accounts_ref_day int,
    accounts_ref_month int,
    accounts_next_due date,
    accounts_last_made_up date,
    accounts_category text,         -- e.g. 'MICRO ENTITY', 'SMALL', 'FULL', 'DORMANT'
    returns_next_due date,
    returns_last_made_up date,
    mortgages_charges int,
    mortgages_outstanding int,
    mortgages_part_satisfied int,
    mortgages_satisfied int,
    sic_codes text[] NOT NULL DEFAULT '{}',     -- the 5-digit codes, e.g. {62012,63110}
    sic_texts text[] NOT NULL DEFAULT '{}',     -- as in the file: '62012 - Business and ...'
    lp_general_partners int,        -- limited partnerships only
    lp_limited_partners int,
    uri text,
    -- most recent first: [{"name": "...", "changed_on": "YYYY-MM-DD"}, ...]
    previous_names jsonb NOT NULL DEFAULT '[]'
        CONSTRAINT companies_previous_names_array CHECK (jsonb_typeof(previous_names) = 'array'),
    conf_stmt_next_due date,
    conf_stmt_last_made_up date,
    -- Enrichment (written by the enrichment agent; never by the importer) -------------
    website text,
    employee_estimate int,
    employee_growth_pct numeric,
    tech_stack text[] NOT NULL DEFAULT '{}',
    social_score numeric,
    officers_count int,
    ch_profile jsonb,               -- the Companies House API company profile, as fetched
    enrichment_status text NOT NULL DEFAULT 'not_enriched'
        CONSTRAINT companies_enrichment_status_vocabulary CHECK (enrichment_status IN (
            'not_enriched', 'enriched', 'not_found', 'error')),
    enriched_at timestamptz,
    industry_description text,
    buying_signals jsonb NOT NULL DEFAULT '[]'
        CONSTRAINT companies_buying_signals_array CHECK (jsonb_typeof(buying_signals) = 'array'),
    -- Bookkeeping -----------------------------------------------------------------------
    -- when an import last wrote this row's Companies House columns (a re-import that
    -- finds them unchanged leaves the row, and so this, alone)
    imported_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Discovery filters on industry, place, status and size. Low-cardinality columns get
-- plain btrees anyway: Postgres deduplicates their entries, and the opportunity bot
-- combines them through bitmap scans.
CREATE INDEX companies_sic_codes_idx ON companies USING gin (sic_codes);
CREATE INDEX companies_post_town_idx ON companies (lower(post_town));
CREATE INDEX companies_country_idx ON companies (country);
CREATE INDEX companies_status_idx ON companies (status);
CREATE INDEX companies_accounts_category_idx ON companies (accounts_category);

-- Set aside while a first import loads an empty companies table: building these
-- indexes and checking the foreign key once at the end costs a fraction of maintaining
-- them row by row. The definitions are saved here in the transaction that drops them,
-- so an import that dies half-way leaves them on record, and the next import (or
-- anyone, by running each ddl) puts them back. See agents/store/companies.py.
CREATE TABLE companies_import_deferred_ddl (
    name text PRIMARY KEY,
    ddl text NOT NULL,
    deferred_at timestamptz NOT NULL DEFAULT now()
);
