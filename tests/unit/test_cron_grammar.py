"""The cron grammar, one table of cases run against both of its implementations: the
SQL validator (``runner_cron_problem``, which guards ``ai_agents.schedule_cron``) and
the Python parser the scheduler uses (``runner.cron``). They must accept the same
expressions and word every refusal the same way, or a schedule the database accepted
could be one the scheduler cannot run."""

from __future__ import annotations

import datetime as dt
import random
import re
from zoneinfo import ZoneInfo

import psycopg
import pytest

from runner.cron import (
    CronError,
    CronFields,
    cron_problem,
    latest_fire_time,
    parse_cron,
    parse_cron_fields,
)
from runner.scheduler import ScheduleTrigger

UTC = dt.UTC


def _trigger(expr: str, tz: str) -> ScheduleTrigger:
    """The APScheduler trigger the scheduler gives a job (times from runner.cron)."""
    return ScheduleTrigger(parse_cron(expr, tz))

# (expression, the problem, or None when valid)
CASES: list[tuple[str, str | None]] = [
    # valid
    ("* * * * *", None),
    ("*/2 * * * * *", None),
    ("0 9 * * MON-FRI", None),
    ("0 9 * * mon-fri", None),
    ("0 0 1 JAN *", None),
    ("0 0 1 jan,Jul *", None),
    ("30 4 1,15 * 5", None),
    ("0 0 * * 0", None),
    ("0 0 * * 7", None),
    ("0 0 * * 0-7", None),
    ("0 0 * * 5-7", None),
    ("0 0 * * SUN-SAT", None),
    ("0 0 29 2 *", None),
    ("0 0 31 * *", None),
    ("0 0 30 2 MON", None),  # ORed with the weekday: fires every Monday
    ("5-10/2 * * * *", None),
    ("0-59/15 * * * * *", None),
    ("  0 9 * * *  ", None),
    ("0\t9\t*\t*\t*", None),
    ("0   9 * * *", None),
    ("0 0 1-31/7 * *", None),
    ("00 09 * * *", None),
    ("0 0 * DEC SAT", None),
    ("*/59 * * * *", None),
    ("0 */23 * * *", None),
    ("0 0 */31 * *", None),
    ("0 0 * */12 *", None),
    ("0 0 * * */7", None),
    ("0 0 * * 1,3,5", None),
    ("59 59 23 31 12 7", None),
    ("0 0 1,*/2 * *", None),
    ("0 0 * * 1-5,SUN", None),
    ("0 0 1 * 1", None),
    # wrong number of fields
    ("", "the expression is empty (set schedule_cron to NULL for no schedule)"),
    ("  \t ", "the expression is empty (set schedule_cron to NULL for no schedule)"),
    ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week) "
                "or 6 with seconds first, got 4"),
    ("* * * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week) "
                      "or 6 with seconds first, got 7"),
    ("@daily", "expected 5 fields (minute hour day-of-month month day-of-week) "
               "or 6 with seconds first, got 1"),
    # out of range
    ("61 * * * *", 'minute field "61": 61 is out of range 0-59'),
    ("60 * * * * *", 'second field "60": 60 is out of range 0-59'),
    ("* 24 * * *", 'hour field "24": 24 is out of range 0-23'),
    ("* * 0 * *", 'day-of-month field "0": 0 is out of range 1-31'),
    ("* * 32 * *", 'day-of-month field "32": 32 is out of range 1-31'),
    ("* * * 0 *", 'month field "0": 0 is out of range 1-12'),
    ("* * * 13 *", 'month field "13": 13 is out of range 1-12'),
    ("* * * * 8", 'day-of-week field "8": 8 is out of range 0-7'),
    ("99999 * * * *", 'minute field "99999": 99999 is out of range 0-59'),
    ("99999999999 * * * *", 'minute field "99999999999": 99999999999 is out of range 0-59'),
    ("1-99999 * * * *", 'minute field "1-99999": 99999 is out of range 0-59'),
    # steps
    ("*/0 * * * *", 'minute field "*/0": step 0 is out of range 1-59'),
    ("*/60 * * * *", 'minute field "*/60": step 60 is out of range 1-59'),
    ("0 */24 * * *", 'hour field "*/24": step 24 is out of range 1-23'),
    ("*/99999 * * * *", 'minute field "*/99999": step 99999 is out of range 1-59'),
    ("0 0 * * 1-5/0", 'day-of-week field "1-5/0": step 0 is out of range 1-7'),
    ("5/2 * * * *", 'minute field "5/2": a step needs "*" or a range before it, got "5/2"'),
    ("x/2 * * * *", 'minute field "x/2": a step needs "*" or a range before it, got "x/2"'),
    ("*/x * * * *", 'minute field "*/x": invalid step "x"'),
    ("*/ * * * *", 'minute field "*/": invalid step ""'),
    ("*/2/3 * * * *", 'minute field "*/2/3": invalid step "2/3"'),
    ("*/-1 * * * *", 'minute field "*/-1": invalid step "-1"'),
    ("/5 * * * *", 'minute field "/5": invalid item "/5"'),
    # lists and ranges
    ("1,,2 * * * *", 'minute field "1,,2": empty list item'),
    (",1 * * * *", 'minute field ",1": empty list item'),
    ("1, * * * *", 'minute field "1,": empty list item'),
    ("5-1 * * * *", 'minute field "5-1": range 5-1 is backwards'),
    ("0 0 * * 7-1", 'day-of-week field "7-1": range 7-1 is backwards'),
    ("0 0 * * SAT-SUN", 'day-of-week field "SAT-SUN": range SAT-SUN is backwards'),
    ("1-x * * * *", 'minute field "1-x": "x" is not a number'),
    ("1-2-3 * * * *", 'minute field "1-2-3": invalid item "1-2-3"'),
    ("-1 * * * *", 'minute field "-1": invalid item "-1"'),
    ("1- * * * *", 'minute field "1-": invalid item "1-"'),
    ("*-5 * * * *", 'minute field "*-5": "*" is not a number'),
    # names: only in their own field, three letters
    ("x * * * *", 'minute field "x": "x" is not a number'),
    ("* * MON * *", 'day-of-month field "MON": "MON" is not a number'),
    ("* * * FOO *", 'month field "FOO": "FOO" is not a number or a month name (JAN-DEC)'),
    ("* * * MON *", 'month field "MON": "MON" is not a number or a month name (JAN-DEC)'),
    ("* * * JANUARY *",
     'month field "JANUARY": "JANUARY" is not a number or a month name (JAN-DEC)'),
    ("* * * * JAN", 'day-of-week field "JAN": "JAN" is not a number or a day name (SUN-SAT)'),
    ("* * * * MONDAY",
     'day-of-week field "MONDAY": "MONDAY" is not a number or a day name (SUN-SAT)'),
    ("0 0 * * \u017fun",  # long s: Python would upper-case it to "SUN"
     'day-of-week field "\u017fun": "\u017fun" is not a number or a day name (SUN-SAT)'),
    ("\u0661 * * * *", 'minute field "\u0661": "\u0661" is not a number'),  # Arabic-Indic 1
    ("0 0 * * 1\n", 'day-of-week field "1\n": "1\n" is not a number or a day name (SUN-SAT)'),
    # other dialects
    ("? * * * *", 'minute field "?": "?" is not a number'),
    ("0 0 L * *", 'day-of-month field "L": "L" is not a number'),
    ("0 0 * * 1#2", 'day-of-week field "1#2": "1#2" is not a number or a day name (SUN-SAT)'),
    ("0 0 ? * *", 'day-of-month field "?": "?" is not a number'),
    # a date that never comes
    ("0 0 30 2 *", 'day-of-month "30" never occurs in month "2"'),
    ("0 0 30-31 FEB *", 'day-of-month "30-31" never occurs in month "FEB"'),
    ("0 0 31 4,6,9,11 *", 'day-of-month "31" never occurs in month "4,6,9,11"'),
    ("0 0 31 2 */2", 'day-of-month "31" never occurs in month "2"'),
]


def _sql_problems(
    conn: psycopg.Connection[tuple[object, ...]], exprs: list[str]
) -> list[str | None]:
    rows = conn.execute(
        "SELECT runner_cron_problem(e) FROM unnest(%s::text[]) WITH ORDINALITY u(e, n) ORDER BY n",
        (exprs,),
    ).fetchall()
    return [row[0] for row in rows]  # type: ignore[misc]


@pytest.mark.parametrize(("expr", "problem"), CASES, ids=[repr(c[0]) for c in CASES])
def test_python_grammar(expr: str, problem: str | None) -> None:
    assert cron_problem(expr) == problem
    if problem is None:
        parse_cron(expr, "UTC")
    else:
        with pytest.raises(CronError) as raised:
            parse_cron(expr, "UTC")
        assert str(raised.value) == f'invalid cron expression "{expr}": {problem}'


def test_sql_grammar_matches_the_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    got = _sql_problems(conn, [expr for expr, _ in CASES])
    mismatches = [(expr, want, sql) for (expr, want), sql in zip(CASES, got, strict=True)
                  if sql != want]
    assert mismatches == []


_GOOD_ATOMS = {
    "second": ["*", "*/2", "*/15", "0", "30", "59", "0-30/10", "10-20"],
    "minute": ["*", "*/5", "0", "15", "59", "0-29/3", "5-10"],
    "hour": ["*", "*/6", "0", "9", "23", "8-17", "0-23/4"],
    "day": ["*", "*/2", "1", "13", "15", "28", "29", "30", "31", "1-7", "10-20/5"],
    "month": ["*", "*/3", "1", "2", "FEB", "apr", "12", "JUN-AUG", "1-12/2", "4,6,9,11"],
    "weekday": ["*", "*/2", "0", "1", "5", "7", "MON", "sun", "MON-FRI", "5-7", "0-6/2"],
}
_BAD_ATOMS = ["*/0", "60", "99999", "5-1", "x", "", "-", "/", "L", "?", "1/2", "*-1",
              "1-2-3", "*/", "JAN", "MON", "8", "32", "0", "13", "24", "\u017fun"]


def _random_expression(rng: random.Random) -> str:
    names = list(_GOOD_ATOMS)
    count = rng.choice([4, 5, 5, 5, 5, 6, 6, 6, 7])
    if count == 5:
        names = names[1:]
    fields = []
    for index in range(count):
        pool = _GOOD_ATOMS[names[index]] if index < len(names) else _GOOD_ATOMS["minute"]
        items = [rng.choice(_BAD_ATOMS) if rng.random() < 0.04 else rng.choice(pool)
                 for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        fields.append(",".join(items))
    return rng.choice([" ", "  ", "\t"]).join(fields)


def test_sql_and_python_agree_on_random_expressions(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """Beyond the table: 3000 generated expressions, most of them invalid somewhere."""
    rng = random.Random(20261121)
    exprs = [_random_expression(rng) for _ in range(3000)]
    got = _sql_problems(conn, exprs)
    mismatches = [(expr, cron_problem(expr), sql)
                  for expr, sql in zip(exprs, got, strict=True) if cron_problem(expr) != sql]
    assert mismatches == []
    valid = sum(problem is None for problem in got)
    assert 500 < valid < 2500  # both kinds are well represented


# -- what a valid expression means -----------------------------------------------------


def _matches(fields: CronFields, moment: dt.datetime) -> bool:
    """Cron's own rule, written independently of cronsim and APScheduler (Sunday = 0)."""
    weekday = (moment.weekday() + 1) % 7
    day_ok = moment.day in fields.days
    weekday_ok = weekday in fields.weekdays
    days = (day_ok or weekday_ok) if fields.days_or_weekdays else (day_ok and weekday_ok)
    return (moment.second in fields.seconds and moment.minute in fields.minutes
            and moment.hour in fields.hours and moment.month in fields.months and days)


def _brute_force(fields: CronFields, start: dt.datetime, count: int, step: dt.timedelta,
                 limit: dt.datetime) -> list[dt.datetime]:
    found: list[dt.datetime] = []
    moment = start
    while len(found) < count and moment < limit:
        if _matches(fields, moment):
            found.append(moment)
        moment += step
    return found


SEMANTIC = [
    "0 9 * * 1", "0 9 * * 0", "0 9 * * 7", "30 12 * * MON-FRI", "0 0 * * 5-7",
    "0 0 * * 0-2", "0 0 * * */2", "0 0 13 * FRI", "0 0 */2 * FRI", "15 6 1,15 * *",
    "0 0 29 2 *", "0 0 * * 1,3,5", "0 */6 * JUN-AUG SUN", "0 0 1 * 1", "0 0 1-7 * SAT",
]


@pytest.mark.parametrize("expr", SEMANTIC)
def test_triggers_fire_exactly_when_cron_says(expr: str) -> None:
    fields = parse_cron_fields(expr)
    trigger = _trigger(expr, "UTC")
    start = dt.datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    limit = start + dt.timedelta(days=5 * 366)
    expected = _brute_force(fields, start, 12, dt.timedelta(minutes=1), limit) if not (
        expr == "0 0 29 2 *") else [dt.datetime(2028, 2, 29, tzinfo=UTC)]
    got: list[dt.datetime] = []
    moment = start
    while len(got) < len(expected):
        fire = trigger.get_next_fire_time(None, moment)
        assert fire is not None
        got.append(fire.astimezone(UTC))
        moment = fire + dt.timedelta(microseconds=1)
    assert got == expected


def test_weekday_numbers_are_crons_not_apschedulers() -> None:
    saturday = dt.datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert saturday.weekday() == 5
    for expr, python_weekday in [("0 9 * * 1", 0), ("0 9 * * 0", 6), ("0 9 * * 7", 6),
                                 ("0 9 * * SUN", 6), ("0 9 * * 6", 5)]:
        fire = _trigger(expr, "UTC").get_next_fire_time(None, saturday)
        assert fire.weekday() == python_weekday, expr


def test_day_of_month_and_weekday_are_ored_when_both_restricted() -> None:
    fires: list[int] = []
    moment = dt.datetime(2026, 11, 1, tzinfo=UTC)
    trigger = _trigger("0 0 13 * FRI", "UTC")
    while len(fires) < 6:
        moment = trigger.get_next_fire_time(None, moment + dt.timedelta(microseconds=1))
        fires.append(moment.day)
    # Fridays 6, 13, 20, 27 November, then Friday 4 and the 11th... and the 13th (a Sunday)
    assert fires == [6, 13, 20, 27, 4, 11]
    assert dt.datetime(2026, 12, 13).weekday() == 6
    nxt = trigger.get_next_fire_time(None, dt.datetime(2026, 12, 12, 1, tzinfo=UTC))
    assert nxt == dt.datetime(2026, 12, 13, tzinfo=UTC)


def test_six_fields_have_seconds_first() -> None:
    trigger = _trigger("*/5 * * * * *", "UTC")
    start = dt.datetime(2026, 11, 21, 10, 0, 1, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, start) == start.replace(second=5)
    five = _trigger("*/5 * * * *", "UTC")  # five fields: minutes, at second 0
    assert five.get_next_fire_time(None, start) == start.replace(minute=5, second=0)


def test_time_zone_is_applied() -> None:
    trigger = _trigger("0 9 * * *", "Europe/London")
    summer = dt.datetime(2026, 7, 1, tzinfo=UTC)
    winter = dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, summer).astimezone(UTC).hour == 8
    assert trigger.get_next_fire_time(None, winter).astimezone(UTC).hour == 9
    assert trigger.get_next_fire_time(None, summer).tzinfo == ZoneInfo("Europe/London")


def test_unknown_time_zone() -> None:
    with pytest.raises(CronError, match='unknown time zone "Mars/Base"'):
        parse_cron("* * * * *", "Mars/Base")
    with pytest.raises(CronError, match=re.escape('unknown time zone "../etc/passwd"')):
        parse_cron("* * * * *", "../etc/passwd")


# -- looking back --------------------------------------------------------------------


def test_latest_fire_time() -> None:
    now = dt.datetime(2026, 11, 21, 10, 0, 7, 500000, tzinfo=UTC)
    every_two = ("*/2 * * * * *", "UTC")
    assert latest_fire_time(*every_two, now, after=now - dt.timedelta(hours=3)) == now.replace(
        second=6, microsecond=0)
    # nothing after "after"
    assert latest_fire_time(*every_two, now, after=now.replace(second=6, microsecond=0)) is None
    assert latest_fire_time(*every_two, now, after=now) is None
    daily = ("0 9 * * *", "UTC")
    assert latest_fire_time(*daily, now, after=now - dt.timedelta(days=400)) == now.replace(
        hour=9, minute=0, second=0, microsecond=0)
    assert latest_fire_time(*daily, now, after=now.replace(hour=9, minute=30)) is None
    yearly = ("0 0 1 JAN *", "UTC")
    assert latest_fire_time(*yearly, now, after=now - dt.timedelta(days=3000)) == dt.datetime(
        2026, 1, 1, tzinfo=UTC)


# -- the write-time check --------------------------------------------------------------


def test_agents_refuse_an_invalid_schedule(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute("INSERT INTO ai_agents (name, agent_type, schedule_cron) "
                     "VALUES ('a', 'noop', '0 25 * * *')")
    assert str(raised.value).startswith(
        'invalid schedule_cron "0 25 * * *" for agent "a": hour field "25": '
        "25 is out of range 0-23")
    conn.execute("INSERT INTO ai_agents (name, agent_type, schedule_cron) "
                 "VALUES ('a', 'noop', '0 9 * * MON-FRI')")
    with pytest.raises(psycopg.errors.CheckViolation, match='day-of-week field "8"'):
        conn.execute("UPDATE ai_agents SET schedule_cron = '0 9 * * 8' WHERE name = 'a'")
    with pytest.raises(psycopg.errors.CheckViolation,
                       match='invalid schedule_timezone for agent "a": unknown time zone'):
        conn.execute("UPDATE ai_agents SET schedule_timezone = 'Mars/Base' WHERE name = 'a'")
    row = conn.execute("SELECT schedule_cron, schedule_timezone FROM ai_agents").fetchone()
    assert row == ("0 9 * * MON-FRI", "UTC")
    conn.execute("UPDATE ai_agents SET schedule_cron = NULL WHERE name = 'a'")
    conn.execute("UPDATE ai_agents SET schedule_timezone = 'Europe/London' WHERE name = 'a'")


def test_every_postgres_time_zone_name_works_in_python(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    """The trigger accepts pg_timezone_names; the scheduler must be able to load them."""
    names = [row[0] for row in conn.execute("SELECT name FROM pg_timezone_names")]
    unknown = []
    for name in names:
        try:
            parse_cron("0 9 * * *", str(name))
        except CronError:
            unknown.append(name)
    assert unknown == []
