"""Text that Postgres can store: NUL characters are dropped at the connection.

Postgres refuses ``\\x00`` in ``text`` and in ``jsonb`` (``\\u0000``), and a single one
in an error message, a log line, an agent's output or a field scraped from a website
would make the whole write fail (a finish that fails is re-run by rescue until its
retries are gone, and the real error is never stored). No NUL ever carries meaning in
what the daemon writes, so :func:`make_storable` removes them once, in the adapters of
a connection, for every ``str`` parameter and every ``Json``/``Jsonb`` value sent
through it, including business rows written by agents' commit hooks. Nothing else in
the code base has to remember to clean anything.

The daemon's connections also take a ``scrub`` (:meth:`runner.redaction.Redactor.
for_storage`) that every such string passes through after its NULs are gone: the same
one place keeps API keys out of error messages, task logs, outputs and the LLM ledger.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from psycopg.abc import AdaptContext, Buffer
from psycopg.types import string
from psycopg.types.json import set_json_dumps

__all__ = ["make_storable", "storable_json_dumps", "strip_nul"]

NUL = "\x00"

_T = TypeVar("_T")


def strip_nul(value: _T) -> _T:
    """``value`` with every NUL removed from its strings, at any depth: ``str``, and
    the keys and values of mappings, lists and tuples (what JSON is made of).
    Anything else is returned as it is; a string without NUL is returned unchanged."""
    return _strip(value)  # type: ignore[no-any-return]


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, "") if NUL in value else value
    if isinstance(value, Mapping):
        return {_strip(key): _strip(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_strip(item) for item in value)
    return value


def storable_json_dumps(obj: Any) -> str:
    """``json.dumps`` of ``obj`` with its strings' NULs removed first, so the document
    never holds a ``\\u0000`` escape (which ``jsonb`` refuses). Cleaning happens on the
    values, never by editing the JSON text, where an escaped backslash followed by
    ``u0000`` would be mangled."""
    return json.dumps(strip_nul(obj))


# Every dumper psycopg registers for ``str``, in its order (the last one of each format
# is the default: text-format "unknown" for ``%s``, binary ``text`` for ``%b``); the
# others are found by oid (arrays, COPY with set_types). Each drops NULs, then dumps.


class _StorableStrBinaryDumperName(string.StrBinaryDumperName):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


class _StorableStrBinaryDumperVarchar(string.StrBinaryDumperVarchar):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


class _StorableStrBinaryDumper(string.StrBinaryDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


class _StorableStrDumperName(string.StrDumperName):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


class _StorableStrDumperVarchar(string.StrDumperVarchar):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


class _StorableStrDumper(string.StrDumper):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


class _StorableStrDumperUnknown(string.StrDumperUnknown):
    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace(NUL, ""))


_STR_DUMPERS = (
    _StorableStrBinaryDumperName,
    _StorableStrBinaryDumperVarchar,
    _StorableStrBinaryDumper,
    _StorableStrDumperName,
    _StorableStrDumperVarchar,
    _StorableStrDumper,
    _StorableStrDumperUnknown,
)


def make_storable(conn: AdaptContext, *, scrub: Callable[[str], str] | None = None) -> None:
    """Make every ``str`` and ``Json``/``Jsonb`` value sent through ``conn`` (a sync or
    async connection, or a cursor) free of NUL characters, then pass it through
    ``scrub`` if given. Idempotent; call it once when the connection is made (the
    pools' ``configure``, the CLI's connect)."""
    if scrub is None:
        for dumper in _STR_DUMPERS:
            conn.adapters.register_dumper(str, dumper)
        set_json_dumps(storable_json_dumps, context=conn)
        return
    for dumper in _STR_DUMPERS:
        conn.adapters.register_dumper(str, _scrubbing_dumper(dumper, scrub))
    set_json_dumps(_scrubbing_json_dumps(scrub), context=conn)


@functools.cache
def _scrubbing_dumper(base: type[Any], scrub: Callable[[str], str]) -> type[Any]:
    """``base`` (one of the NUL-stripping dumpers) with ``scrub`` applied first, after
    the NULs are gone (a NUL inside a secret must not hide it from ``scrub``). Cached:
    one class per dumper and scrub, however many connections a pool makes."""

    def dump(self: Any, obj: str) -> Buffer | None:
        return base.dump(self, scrub(obj.replace(NUL, "")))  # type: ignore[no-any-return]

    return type(base.__name__, (base,), {"dump": dump})


class _ScrubbingDumps:
    """``json.dumps`` of the cleaned value. An object, not a closure: psycopg caches
    the dumper class it builds per dumps callable, and refuses to (with a warning
    about a leak) for closures."""

    __slots__ = ("_scrub",)

    def __init__(self, scrub: Callable[[str], str]) -> None:
        self._scrub = scrub

    def __call__(self, obj: Any) -> str:
        return json.dumps(_scrub(strip_nul(obj), self._scrub))


@functools.cache
def _scrubbing_json_dumps(scrub: Callable[[str], str]) -> Callable[[Any], str]:
    return _ScrubbingDumps(scrub)


def _scrub(value: Any, scrub: Callable[[str], str]) -> Any:
    # The values and keys, never the JSON text, whose escaping would hide a secret.
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {_scrub(key, scrub): _scrub(item, scrub) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(item, scrub) for item in value]
    return value
