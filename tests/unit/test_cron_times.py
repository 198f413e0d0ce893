"""When a schedule fires (runner.cron, over cronsim): daylight saving as Debian cron
handles it, the seconds field, looking back over long downtime, bad time zones.

DST dates used: America/New_York falls back on 2026-11-01 (02:00 EDT -> 01:00 EST)
and springs forward on 2026-03-08 (02:00 EST -> 03:00 EDT); Europe/London falls back
on 2026-10-25 (02:00 BST -> 01:00 GMT) and springs forward on 2026-03-29 (01:00 GMT
-> 02:00 BST).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from runner.cron import (
    CronError,
    latest_fire_time,
    next_fire_time,
    parse_cron,
    parse_cron_fields,
)
from runner.scheduler import ScheduleTrigger
from tests.unit.test_cron_grammar import CASES, _random_expression

UTC = dt.UTC
NEW_YORK = "America/New_York"
LONDON = "Europe/London"
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=UTC)


def _fires(expr: str, tz: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """Every fire in (start, end], by repeated next_fire_time (bounded)."""
    schedule = parse_cron(expr, tz)
    fires: list[dt.datetime] = []
    moment = start
    for _ in range(10_000):
        fire = schedule.next_fire_time(moment)
        if fire is None or fire > end:
            return fires
        assert fire > moment
        fires.append(fire)
        moment = fire
    raise AssertionError("more than 10000 fires")


def _repeats(local: dt.datetime) -> bool:
    """Whether this wall-clock time happens twice (a fall-back night): its first pass
    has the larger UTC offset. (In a spring-forward gap fold=1 has the larger one.)"""
    first, second = local.replace(fold=0).utcoffset(), local.replace(fold=1).utcoffset()
    assert first is not None and second is not None
    return first > second


def _local(fires: list[dt.datetime], tz: str) -> list[str]:
    return [fire.astimezone(ZoneInfo(tz)).isoformat() for fire in fires]


# -- falling back: a fixed-time job runs once in the repeated hour -----------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("tz", "day", "first_pass", "second_pass"), [
    (NEW_YORK, dt.date(2026, 11, 1), "-04:00", "-05:00"),
    (LONDON, dt.date(2026, 10, 25), "+01:00", "+00:00"),
])
def test_fall_back_fires_once_and_returns_promptly(
    tz: str, day: dt.date, first_pass: str, second_pass: str
) -> None:
    start = dt.datetime.combine(day, dt.time(), ZoneInfo(tz)) - dt.timedelta(days=1)
    fires = _fires("30 1 * * *", tz, start, start + dt.timedelta(days=3))
    previous, after = day - dt.timedelta(days=1), day + dt.timedelta(days=1)
    assert _local(fires, tz) == [
        f"{previous}T01:30:00{first_pass}",
        f"{day}T01:30:00{first_pass}",  # the first 01:30 only
        f"{after}T01:30:00{second_pass}",
    ]
    the_fire = fires[1]
    # From the second pass through the repeated hour (the case that used to loop
    # forever): looking back finds the one fire, looking ahead the next day's.
    second_0145 = dt.datetime.combine(day, dt.time(1, 45), ZoneInfo(tz)).replace(fold=1)
    assert _repeats(second_0145)
    for now in (second_0145, second_0145.replace(minute=15), second_0145.replace(minute=30)):
        assert latest_fire_time("30 1 * * *", tz, now, LONG_AGO) == the_fire
        assert latest_fire_time("30 1 * * *", tz, now, the_fire) is None
        assert next_fire_time("30 1 * * *", tz, now) == fires[2]
    # The scheduler's trigger walks the same times.
    trigger = ScheduleTrigger(parse_cron("30 1 * * *", tz))
    assert trigger.get_next_fire_time(the_fire, the_fire) == fires[2]
    assert trigger.get_next_fire_time(None, second_0145) == fires[2]


@pytest.mark.timeout(10)
def test_fall_back_wildcard_jobs_follow_real_time() -> None:
    """An hourly job runs every real hour, so twice at 01:00 (Debian cron, cronsim)."""
    start = dt.datetime(2026, 11, 1, 4, tzinfo=UTC)  # 00:00 EDT
    assert _local(_fires("0 * * * *", NEW_YORK, start, start + dt.timedelta(hours=4)),
                  NEW_YORK) == [
        "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00",
        "2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00"]


# -- springing forward: a job in the skipped hour runs once right after the jump -------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("expr", "tz", "day", "expected"), [
    ("30 2 * * *", NEW_YORK, dt.date(2026, 3, 8),
     ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("30 1 * * *", LONDON, dt.date(2026, 3, 29),
     ["2026-03-28T01:30:00+00:00", "2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"]),
    # two times in the skipped hour still make one run
    ("15,45 2 * * *", NEW_YORK, dt.date(2026, 3, 8),
     ["2026-03-07T02:15:00-05:00", "2026-03-07T02:45:00-05:00", "2026-03-08T03:00:00-04:00",
      "2026-03-09T02:15:00-04:00", "2026-03-09T02:45:00-04:00"]),
])
def test_spring_forward_runs_once_after_the_jump(
    expr: str, tz: str, day: dt.date, expected: list[str]
) -> None:
    start = dt.datetime.combine(day, dt.time(), ZoneInfo(tz)) - dt.timedelta(days=1)
    end = start + dt.timedelta(days=3)
    fires = _fires(expr, tz, start, end)
    assert _local(fires, tz) == expected
    # exactly cronsim's answer
    sim = CronSim(expr, start)
    assert fires == [next(sim).astimezone(UTC) for _ in expected]
    # one run on the day of the jump; looking back from just after it finds it
    [jump_run] = [fire for fire in fires if fire.astimezone(ZoneInfo(tz)).date() == day]
    assert latest_fire_time(expr, tz, jump_run + dt.timedelta(minutes=5), LONG_AGO) == jump_run


@pytest.mark.timeout(60)
@pytest.mark.parametrize("tz", [NEW_YORK, LONDON, "Australia/Sydney", "America/Santiago"])
@pytest.mark.parametrize("expr", [
    "30 1 * * *", "30 2 * * *", "0 * * * *", "*/15 * * * *", "0,30 1-3 * * *",
    "15 */2 * * *", "*/7 1 * * *", "0-59/5 0-4 * * *", "0 0 * * *", "59 0,1 * * SUN",
])
def test_fire_times_are_cronsims_around_every_transition(expr: str, tz: str) -> None:
    """Forwards: the same fires as iterating cronsim. Backwards: each fire is the
    latest one at its own time, and nothing is due a microsecond before it."""
    zone = ZoneInfo(tz)
    transitions = []
    moment = dt.datetime(2026, 1, 1, tzinfo=UTC)
    while moment.year < 2027:
        later = moment + dt.timedelta(minutes=30)
        if moment.astimezone(zone).utcoffset() != later.astimezone(zone).utcoffset():
            transitions.append(later)
        moment = later
    assert len(transitions) == 2
    schedule = parse_cron(expr, tz)
    for transition in transitions:
        start = transition - dt.timedelta(hours=4)
        sim = CronSim(expr, start.astimezone(zone))
        previous = start
        while previous < transition + dt.timedelta(hours=28):
            fire = schedule.next_fire_time(previous)
            assert fire == next(sim).astimezone(UTC), (previous, fire)
            assert schedule.latest_fire_time(fire, previous) == fire
            assert schedule.latest_fire_time(fire - dt.timedelta(microseconds=1), previous) \
                is None
            previous = fire


# -- the seconds field -------------------------------------------------------------------


def test_six_fields_fire_every_few_seconds() -> None:
    start = dt.datetime(2026, 11, 21, 10, 59, 51, 250000, tzinfo=UTC)
    fires = _fires("*/5 * * * * *", "UTC", start, start + dt.timedelta(seconds=20))
    assert [fire.strftime("%H:%M:%S") for fire in fires] == [
        "10:59:55", "11:00:00", "11:00:05", "11:00:10"]
    assert latest_fire_time("*/5 * * * * *", "UTC", start, LONG_AGO) == start.replace(
        second=50, microsecond=0)
    assert latest_fire_time("10-20/5 0 12 * * *", "UTC", start, LONG_AGO) == dt.datetime(
        2026, 11, 21, 12, 0, 20, tzinfo=UTC) - dt.timedelta(days=1)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("tz", "day"), [
    (NEW_YORK, dt.date(2026, 11, 1)), (NEW_YORK, dt.date(2026, 3, 8)),
    (LONDON, dt.date(2026, 10, 25)), (LONDON, dt.date(2026, 3, 29)),
])
def test_seconds_ride_on_the_minutes_debian_cron_picks(tz: str, day: dt.date) -> None:
    """A 6-field expression follows the DST rules of its five minute-level fields:
    cronsim alone would fire ``0 30 1 * * *`` twice when 01:30 repeats."""
    start = dt.datetime.combine(day, dt.time(), ZoneInfo(tz)) - dt.timedelta(days=1)
    end = start + dt.timedelta(days=3)
    for hour in (1, 2):
        minutes = _fires(f"30 {hour} * * *", tz, start, end)
        assert _fires(f"0 30 {hour} * * *", tz, start, end) == minutes
        assert _fires(f"*/20 30 {hour} * * *", tz, start, end) == [
            minute + dt.timedelta(seconds=second) for minute in minutes
            for second in (0, 20, 40)]
    fall_back = dt.datetime.combine(day, dt.time(1, 45), ZoneInfo(tz)).replace(fold=1)
    if _repeats(fall_back):
        # (in UTC: an aware time in a repeated hour never equals one in another zone)
        first_0130 = dt.datetime.combine(day, dt.time(1, 30), ZoneInfo(tz)).astimezone(UTC)
        assert latest_fire_time("*/20 30 1 * * *", tz, fall_back, LONG_AGO) == \
            first_0130 + dt.timedelta(seconds=40)


# -- looking back ----------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("tz", ["UTC", NEW_YORK, "Pacific/Chatham"])
def test_latest_fire_after_years_of_downtime_is_fast(tz: str) -> None:
    now = dt.datetime(2026, 11, 21, 10, 0, 7, tzinfo=UTC)
    began = time.perf_counter()
    yearly = latest_fire_time("0 0 1 JAN *", tz, now, now - dt.timedelta(days=20 * 366))
    leap = latest_fire_time("0 0 29 2 *", tz, now, now - dt.timedelta(days=20 * 366))
    never_since = latest_fire_time("0 0 1 JAN *", tz, now, dt.datetime(2026, 1, 2, tzinfo=UTC))
    elapsed = time.perf_counter() - began
    zone = ZoneInfo(tz)
    assert yearly == dt.datetime(2026, 1, 1, tzinfo=zone)
    assert leap == dt.datetime(2024, 2, 29, tzinfo=zone)
    assert never_since is None
    assert elapsed < 1.0


def test_latest_fire_time_is_within_after_and_now() -> None:
    now = dt.datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    assert latest_fire_time("0 9 * * *", "UTC", now, LONG_AGO) == now  # "now" included
    assert latest_fire_time("0 9 * * *", "UTC", now, now) is None  # "after" excluded
    assert latest_fire_time("0 9 * * *", "UTC", now, now + dt.timedelta(hours=1)) is None
    assert next_fire_time("0 9 * * *", "UTC", now) == now + dt.timedelta(days=1)


def test_trigger_skips_a_backlog_to_the_latest_due_fire() -> None:
    """After a stall APScheduler asks for every due time; jobs coalesce to the latest,
    so the trigger jumps there instead of walking a day of seconds."""
    trigger = ScheduleTrigger(parse_cron("* * * * * *", "UTC"))
    stalled = dt.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    now = stalled + dt.timedelta(days=1, microseconds=500)
    assert trigger.get_next_fire_time(stalled, now) == now.replace(microsecond=0)
    assert trigger.get_next_fire_time(now.replace(microsecond=0), now) == now.replace(
        microsecond=0) + dt.timedelta(seconds=1)
    # a new job: at or after now
    assert trigger.get_next_fire_time(None, stalled) == stalled


# -- inputs ----------------------------------------------------------------------------


def test_unknown_time_zone() -> None:
    now = dt.datetime(2026, 11, 21, tzinfo=UTC)
    with pytest.raises(CronError) as raised:
        next_fire_time("0 9 * * *", "Mars/Base", now)
    assert raised.value.detail == 'unknown time zone "Mars/Base"'
    assert str(raised.value) == 'invalid cron expression "0 9 * * *": unknown time zone ' \
        '"Mars/Base"'
    with pytest.raises(CronError, match='unknown time zone "Mars/Base"'):
        latest_fire_time("0 9 * * *", "Mars/Base", now, LONG_AGO)
    with pytest.raises(CronError, match='unknown time zone "Not/A_Zone"'):
        ScheduleTrigger(parse_cron("* * * * * *", "Not/A_Zone"))


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire_time("0 9 * * *", "UTC", dt.datetime(2026, 11, 21))


def test_cronsim_reads_every_accepted_expression_as_we_do() -> None:
    """The grammar decides what is valid; cronsim must then mean the same sets by it
    (its own grammar is looser, never narrower, for what ours accepts)."""
    rng = random.Random(20261122)
    exprs = [expr for expr, problem in CASES if problem is None]
    exprs += [expr for expr in (_random_expression(rng) for _ in range(3000))
              if _valid(expr)]
    assert len(exprs) > 500
    for expr in exprs:
        ours = parse_cron_fields(expr)
        theirs = CronSim(expr, dt.datetime(2026, 1, 1, tzinfo=UTC))
        assert (ours.seconds, ours.minutes, ours.hours, ours.days, ours.months) == tuple(
            frozenset(values) for values in (
                theirs.seconds, theirs.minutes, theirs.hours, theirs.days, theirs.months)), expr
        assert all(isinstance(day, int) for day in theirs.weekdays), expr
        assert ours.weekdays == {day % 7 for day in theirs.weekdays if isinstance(day, int)}, expr
        assert ours.days_or_weekdays is not theirs.day_and, expr
        parse_cron(expr, NEW_YORK)


def _valid(expr: str) -> bool:
    try:
        parse_cron_fields(expr)
    except CronError:
        return False
    return True
