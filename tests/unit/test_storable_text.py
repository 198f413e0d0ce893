"""strip_nul and the JSON dumps the storable connections use (runner.store.text)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from runner.store.text import storable_json_dumps, strip_nul

# Text with plenty of NULs (and backslashes, and the letters of "u0000").
_TEXT = st.text(alphabet=st.sampled_from("\x00\\u0a é\U0001f600\n\""), max_size=20) | st.text()
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(_TEXT, children, max_size=4),
    max_leaves=20,
)


def _strings(value: Any) -> Iterator[str]:
    """Every string of a JSON-like value, keys included, in traversal order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _shape(value: Any) -> Any:
    """The value with every string replaced by a marker (dict keys by position)."""
    if isinstance(value, str):
        return str
    if isinstance(value, dict):
        return [("key", _shape(item)) for item in value.values()]
    if isinstance(value, list | tuple):
        return (type(value), [_shape(item) for item in value])
    return value


def _keys_stay_distinct(value: Any) -> bool:
    """Whether no two keys of one mapping differ only by NULs (they would merge)."""
    if isinstance(value, dict):
        cleaned = {key.replace("\x00", "") for key in value}
        return len(cleaned) == len(value) and all(map(_keys_stay_distinct, value.values()))
    if isinstance(value, list):
        return all(map(_keys_stay_distinct, value))
    return True


@given(_TEXT)
def test_a_string_loses_exactly_its_nuls(text: str) -> None:
    cleaned = strip_nul(text)
    assert "\x00" not in cleaned
    assert cleaned == text.replace("\x00", "")


@given(_JSON)
def test_a_json_value_loses_exactly_its_nuls(value: Any) -> None:
    assume(_keys_stay_distinct(value))
    cleaned = strip_nul(value)
    assert all("\x00" not in text for text in _strings(cleaned))
    assert list(_strings(cleaned)) == [text.replace("\x00", "") for text in _strings(value)]
    assert _shape(cleaned) == _shape(value)


@given(_JSON)
def test_the_dumped_json_has_no_nul_escape_and_reads_back_cleaned(value: Any) -> None:
    document = storable_json_dumps(value)
    assert json.loads(document) == json.loads(json.dumps(strip_nul(value)))
    # Only a NUL itself could put "\u0000" in the document unescaped-backslash first.
    assert "\\u0000" not in document.replace("\\\\", "")


def test_values_without_nul_come_back_as_they_are() -> None:
    text = "no nul here"
    assert strip_nul(text) is text
    assert strip_nul(42) == 42 and strip_nul(None) is None
    assert strip_nul(("a\x00", 1)) == ("a", 1)


def test_keys_that_differ_only_by_nul_merge_the_last_one_winning() -> None:
    assert strip_nul({"a\x00": 1, "a": 2}) == {"a": 2}


def test_a_literal_backslash_u0000_is_content_not_a_nul() -> None:
    assert strip_nul("C:\\u0000") == "C:\\u0000"
    assert json.loads(storable_json_dumps({"p": "C:\\u0000"})) == {"p": "C:\\u0000"}
