"""Cron: the grammar of ``schedule_cron`` and when a schedule fires. Pure: no I/O.

The grammar (:func:`parse_cron_fields`) has an SQL twin, ``runner_cron_problem`` in
sql/0005_workflows.sql, that validates ``schedule_cron`` on write; they must accept the
same expressions and word every refusal the same way, or the database could accept a
schedule the scheduler cannot run. tests/unit/test_cron_grammar.py runs one table of
cases against both.

Fire times come from cronsim (the evaluator Healthchecks uses), which follows Debian
cron, daylight saving included: a job at a fixed local time (neither minute nor hour
starts with ``*``) runs once in a repeated hour and, when its time is skipped, once
right after the jump; a wildcard job follows real time. cronsim also reads a sixth,
seconds-first field, but applies those DST rules only to 5-field expressions (a
6-field one would fire twice in a repeated hour and never in a skipped one). So the
seconds field stays ours: cronsim walks the five minute-level fields, and each minute
it yields is expanded into the selected seconds. ``0 30 1 * * *`` therefore fires
exactly when ``30 1 * * *`` does.

Times go in and come out in UTC (any aware datetime is accepted); the schedule's zone
is used only to match the fields. Every search is bounded.

Known limit, cronsim's: in Australia/Lord_Howe (the one zone whose DST shift is 30
minutes) a wildcard-hour schedule such as ``15 */2 * * *`` skips the 02:15 after the
fall-back going forwards, though looking back finds it; a daemon restarted in that half
hour would catch it up as missed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterator
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from runner.errors import CronError

__all__ = [
    "CronError",
    "CronFields",
    "CronSchedule",
    "cron_problem",
    "latest_fire_time",
    "next_fire_time",
    "parse_cron",
    "parse_cron_fields",
]

_UTC = dt.UTC


# =====================================================================================
# The grammar (twin of runner_cron_problem in sql/0005_workflows.sql: keep them equal)
# =====================================================================================

_MONTH_NAMES: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                       "NOV", "DEC")
_DAY_NAMES: Final = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# February counts 29 days: a 29th of February does happen.
_MONTH_DAYS: Final = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: tuple[str, ...] | None = None
    #: the value of names[0]
    name_base: int = 0


_SECOND = _FieldSpec("second", 0, 59)
_MINUTE = _FieldSpec("minute", 0, 59)
_HOUR = _FieldSpec("hour", 0, 23)
_DAY = _FieldSpec("day-of-month", 1, 31)
_MONTH = _FieldSpec("month", 1, 12, _MONTH_NAMES, 1)
_WEEKDAY = _FieldSpec("day-of-week", 0, 7, _DAY_NAMES, 0)

_DIGITS = re.compile(r"[0-9]+")
_NAME = re.compile(r"[A-Za-z]{3}")
_RANGE = re.compile(r"[^-]+-[^-]+")
_SINGLE = re.compile(r"[^-]+")
_BLANKS = re.compile(r"[ \t]+")


class _Problem(Exception):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class CronFields:
    """What an expression selects, in cron's own numbering (day-of-week 0 = Sunday;
    7 is folded into 0)."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    #: Vixie cron: when both day fields are restricted (neither starts with "*"), a day
    #: matching either fires; otherwise a day must match both.
    days_or_weekdays: bool


def _value(token: str, spec: _FieldSpec) -> int:
    if _DIGITS.fullmatch(token):
        # more than four digits is out of range whatever the field
        value = int(token) if len(token) <= 4 else None
        if value is None or not spec.low <= value <= spec.high:
            raise _Problem(f"{token} is out of range {spec.low}-{spec.high}")
        return value
    if spec.names is not None and _NAME.fullmatch(token) and token.upper() in spec.names:
        return spec.names.index(token.upper()) + spec.name_base
    if spec.names is None:
        raise _Problem(f'"{token}" is not a number')
    if spec.name_base == 1:
        raise _Problem(f'"{token}" is not a number or a month name (JAN-DEC)')
    raise _Problem(f'"{token}" is not a number or a day name (SUN-SAT)')


def _field(text: str, spec: _FieldSpec) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        try:
            values.update(_item(item, spec))
        except _Problem as problem:
            raise _Problem(f'{spec.name} field "{text}": {problem}') from None
    return frozenset(values)


def _item(item: str, spec: _FieldSpec) -> range | list[int]:
    base, step_text = item, None
    step = 1
    if "/" in item:
        base, step_text = item.split("/", 1)
        if _DIGITS.fullmatch(step_text):
            step = int(step_text) if len(step_text) <= 4 else spec.high + 1
    if item == "":
        raise _Problem("empty list item")
    if step_text is not None and not _DIGITS.fullmatch(step_text):
        raise _Problem(f'invalid step "{step_text}"')
    if not 1 <= step <= spec.high:
        raise _Problem(f"step {step_text} is out of range 1-{spec.high}")
    if base == "*":
        return range(spec.low, spec.high + 1, step)
    if _RANGE.fullmatch(base):
        low_text, high_text = base.split("-")
        low = _value(low_text, spec)
        high = _value(high_text, spec)
        if low > high:
            raise _Problem(f"range {base} is backwards")
        return range(low, high + 1, step)
    if _SINGLE.fullmatch(base):
        if step_text is not None:
            raise _Problem(f'a step needs "*" or a range before it, got "{item}"')
        return [_value(base, spec)]
    raise _Problem(f'invalid item "{item}"')


def parse_cron_fields(expr: str) -> CronFields:
    """Parse a 5-field (``m h dom mon dow``) or 6-field (seconds first) expression;
    :class:`CronError` names the bad field."""
    trimmed = expr.strip(" \t")
    if trimmed == "":
        raise CronError(expr, "the expression is empty (set schedule_cron to NULL for no schedule)")
    parts = _BLANKS.split(trimmed)
    if len(parts) == 5:
        parts.insert(0, "0")
    elif len(parts) != 6:
        raise CronError(
            expr,
            "expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with seconds first, got {len(parts)}",
        )
    try:
        seconds = _field(parts[0], _SECOND)
        minutes = _field(parts[1], _MINUTE)
        hours = _field(parts[2], _HOUR)
        days = _field(parts[3], _DAY)
        months = _field(parts[4], _MONTH)
        weekdays = frozenset(day % 7 for day in _field(parts[5], _WEEKDAY))
    except _Problem as problem:
        raise CronError(expr, str(problem)) from None
    days_or_weekdays = not parts[3].startswith("*") and not parts[5].startswith("*")
    # When days are ANDed with weekdays, some selected day must exist in some selected
    # month; any such date falls on every weekday over the years.
    if not days_or_weekdays and not any(
        day <= _MONTH_DAYS[month - 1] for day in days for month in months
    ):
        raise CronError(expr, f'day-of-month "{parts[3]}" never occurs in month "{parts[4]}"')
    return CronFields(seconds, minutes, hours, days, months, weekdays, days_or_weekdays)


def cron_problem(expr: str | None) -> str | None:
    """What is wrong with ``expr`` (worded as ``runner_cron_problem`` words it), or None."""
    if expr is None:
        return None
    try:
        parse_cron_fields(expr)
    except CronError as exc:
        return exc.detail
    return None



# =====================================================================================
# Fire times
# =====================================================================================

_ONE_MINUTE: Final = dt.timedelta(minutes=1)
_ONE_SECOND: Final = dt.timedelta(seconds=1)
#: cronsim's Debian mode works in local wall-clock time and so cannot tell the two
#: 01:15s of a fall-back night apart; looking back from the second one starts this much
#: later (more than any DST shift) and skips what is later than "now".
_FOLD_PAD: Final = dt.timedelta(hours=3)
#: cronsim minutes one search may step over: those skipped for a fold (at most the pad's
#: worth) and one more. A whole day's minutes is far beyond that; reaching it is a bug.
_MAX_MINUTE_STEPS: Final = 24 * 60


@dataclasses.dataclass(frozen=True, slots=True)
class CronSchedule:
    """A valid expression in a known time zone (:func:`parse_cron`)."""

    expr: str
    tz: str
    fields: CronFields
    zone: ZoneInfo
    #: the five minute-level fields, as cronsim reads them
    minute_expr: str
    #: the selected seconds, ascending ((0,) for a 5-field expression)
    seconds: tuple[int, ...]

    def next_fire_time(self, after: dt.datetime) -> dt.datetime | None:
        """The first fire strictly after ``after``, in UTC; None if there is none within
        the 50 years cronsim looks ahead (no valid expression gets there).

        cronsim's wildcard search can go round in circles inside a repeated period that
        does not start on a whole hour (Pacific/Chatham, Australia/Lord_Howe): the
        bounded search then steps an hour past it rather than fail the schedule, so a
        wildcard schedule may miss fires in that one period (docs/workflows.md)."""
        for hop in range(_MAX_HOPS):
            try:
                return self._next_fire_time(_utc(after) + hop * _ONE_HOUR)
            except _SearchStuck:
                continue
        raise RuntimeError(f"no fire time found for {self.expr!r} in {self.tz}")

    def _next_fire_time(self, after: dt.datetime) -> dt.datetime | None:
        # cronsim yields minutes strictly after its start: include the one holding `after`
        start = after.replace(second=0, microsecond=0) - _ONE_SECOND
        for minute in self._minutes(start, reverse=False):
            for second in self.seconds:
                fire = minute + second * _ONE_SECOND
                # In Debian mode a start in a fall-back fold reads as the first pass of
                # that wall-clock time, so cronsim may yield minutes already past.
                if fire > after:
                    return fire
        return None

    def latest_fire_time(self, now: dt.datetime, after: dt.datetime) -> dt.datetime | None:
        """The last fire in ``(after, now]``, in UTC, or None. One step back per minute
        cronsim yields, however long ago ``after`` is. A search stuck in a repeated
        period (see :meth:`next_fire_time`) looks again from an hour earlier."""
        for hop in range(_MAX_HOPS):
            try:
                return self._latest_fire_time(_utc(now) - hop * _ONE_HOUR, _utc(after))
            except _SearchStuck:
                continue
        raise RuntimeError(f"no fire time found for {self.expr!r} in {self.tz}")

    def _latest_fire_time(self, now: dt.datetime, after: dt.datetime) -> dt.datetime | None:
        if now <= after:
            return None
        # cronsim looking back yields minutes strictly before its start: include now's
        start = now.replace(second=0, microsecond=0) + _ONE_MINUTE
        if start.astimezone(self.zone).fold:
            start += _FOLD_PAD
        for minute in self._minutes(start, reverse=True):
            due = [fire for second in self.seconds
                   if (fire := minute + second * _ONE_SECOND) <= now]
            if due:
                # Minutes come latest first: the first one with a due second decides.
                return due[-1] if due[-1] > after else None
        return None

    def _minutes(self, start: dt.datetime, *, reverse: bool) -> Iterator[dt.datetime]:
        """The schedule's minutes (second 0, UTC) from ``start`` onwards, or backwards."""
        sim = CronSim(self.minute_expr, start.astimezone(self.zone), reverse=reverse)
        for _ in range(_MAX_MINUTE_STEPS):
            try:
                minute = next(sim)
            except StopIteration:
                # cronsim gives up after 50 years without a match
                return
            yield minute.astimezone(_UTC)
        raise _SearchStuck(
            f"cron search for {self.expr!r} in {self.tz} took over {_MAX_MINUTE_STEPS} steps")


class _SearchStuck(RuntimeError):
    """cronsim did not find the next minute within the search bound."""


_ONE_HOUR: Final = dt.timedelta(hours=1)
#: hours a stuck search may step over (a repeated period lasts an hour at most)
_MAX_HOPS: Final = 3


def parse_cron(expr: str, tz: str) -> CronSchedule:
    """Check the expression and the time zone; :class:`CronError` says what is wrong."""
    fields = parse_cron_fields(expr)
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(expr, f'unknown time zone "{tz}"') from None
    minute_expr = " ".join(_BLANKS.split(expr.strip(" \t"))[-5:])
    try:
        # cronsim parses on construction; the grammar above is stricter than its own,
        # so this refusing an expression would be a bug (tests compare the two).
        CronSim(minute_expr, dt.datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        raise CronError(expr, f"the cron evaluator refused it ({exc})") from None
    return CronSchedule(expr, tz, fields, zone, minute_expr, tuple(sorted(fields.seconds)))


def next_fire_time(expr: str, tz: str, after: dt.datetime) -> dt.datetime | None:
    """The first fire of ``expr`` in ``tz`` strictly after ``after``, in UTC."""
    return parse_cron(expr, tz).next_fire_time(after)


def latest_fire_time(
    expr: str, tz: str, now: dt.datetime, after: dt.datetime
) -> dt.datetime | None:
    """The last fire of ``expr`` in ``tz`` in ``(after, now]``, in UTC, or None."""
    return parse_cron(expr, tz).latest_fire_time(now, after)


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"cron times must be timezone-aware, got {moment!r}")
    return moment.astimezone(_UTC)
