"""The daemon's connections keep API keys out of every stored string
(runner.store.text.make_storable with a scrub): text, varchar, text[], json, jsonb, COPY."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Json, Jsonb

from runner.redaction import Redactor
from runner.store.text import make_storable

KEY = "sk-ant-test-SECRET123"


def test_every_string_written_through_a_scrubbing_connection_loses_the_key(db_url: str) -> None:
    scrub = Redactor([KEY])
    with psycopg.connect(db_url, autocommit=True) as conn:
        make_storable(conn, scrub=scrub)
        conn.execute("CREATE TEMP TABLE t (a text, b varchar, c text[], d json, e jsonb)")
        # A NUL inside the key must not hide it from the scrub.
        hidden = KEY[:5] + "\x00" + KEY[5:]
        conn.execute("INSERT INTO t VALUES (%s, %s, %s, %s, %s)", (
            f"error: {hidden}", f"key={KEY}", [KEY, "kept"],
            Json({"k": KEY, KEY: [f"x {KEY}"]}), Jsonb({"nested": {"list": [KEY, 1]}}),
        ))
        conn.execute("INSERT INTO t (a) VALUES (%b)", (f"binary {KEY}",))
        with conn.cursor().copy("COPY t (a) FROM STDIN") as copy:
            copy.write_row((f"copied {KEY}",))
        rows: list[tuple[Any, ...]] = conn.execute("SELECT * FROM t").fetchall()
    assert rows[0] == ("error: ***", "key=***", ["***", "kept"],
                       {"k": "***", "***": ["x ***"]}, {"nested": {"list": ["***", 1]}})
    assert [row[0] for row in rows[1:]] == ["binary ***", "copied ***"]


def test_a_plain_storable_connection_stores_what_it_is_given(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        make_storable(conn)
        row = conn.execute("SELECT %s::text, %s::jsonb", (f"a\x00{KEY}", Jsonb({"k": KEY}))
                           ).fetchone()
    assert row == (f"a{KEY}", {"k": KEY})
