"""Reading a careers page for the openings it lists (the scout's ``job_posting`` signal).

Two sources, the first that yields anything wins:

1. schema.org ``JobPosting`` objects in ``<script type="application/ld+json">`` blocks
   (a single object, a list, or inside ``@graph``): the structured data job boards and
   applicant-tracking systems publish for search engines; ``title`` and ``datePosted``
   are read.
2. The page's list items (``<li>``) outside navigation, header and footer, each a
   short line of text (at most :data:`MAX_TITLE_CHARS`): the plain careers page that
   lists its roles.

At most :data:`MAX_OPENINGS` are returned. The page itself comes from the bounded
fetcher (``agents/website.py``), so its size is already capped.
"""

from __future__ import annotations

import datetime as dt
import json
from html.parser import HTMLParser
from typing import Any, Final

from agents.signals import JobOpening, clean_title

__all__ = ["MAX_OPENINGS", "MAX_TITLE_CHARS", "job_openings"]

MAX_OPENINGS: Final = 100
MAX_TITLE_CHARS: Final = 120
_SKIPPED: Final = frozenset({"nav", "header", "footer", "script", "style", "template"})


class _CareersParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.json_ld: list[str] = []
        self.items: list[str] = []
        self._skipping: list[str] = []
        self._in_json_ld = False
        self._json_parts: list[str] = []
        self._item: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: (value or "") for name, value in attrs}
        if tag == "script" and values.get("type", "").lower() == "application/ld+json":
            self._in_json_ld = True
            self._json_parts = []
            return
        if tag in _SKIPPED:
            self._skipping.append(tag)
        elif tag == "li" and not self._skipping:
            self._close_item()
            self._item = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_json_ld:
            self._in_json_ld = False
            self.json_ld.append("".join(self._json_parts))
            return
        if self._skipping and self._skipping[-1] == tag:
            self._skipping.pop()
        elif tag in ("li", "ul", "ol"):
            self._close_item()

    def handle_data(self, data: str) -> None:
        if self._in_json_ld:
            self._json_parts.append(data)
        elif self._item is not None and not self._skipping:
            self._item.append(data)

    def _close_item(self) -> None:
        if self._item is not None:
            text = clean_title(" ".join(self._item))
            if 0 < len(text) <= MAX_TITLE_CHARS:
                self.items.append(text)
            self._item = None


def _postings(document: Any) -> list[dict[str, Any]]:
    """Every ``JobPosting`` object in a JSON-LD document."""
    found: list[dict[str, Any]] = []
    stack = [document]
    while stack and len(found) < MAX_OPENINGS:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            kinds = node.get("@type")
            kinds = kinds if isinstance(kinds, list) else [kinds]
            if "JobPosting" in kinds:
                found.append(node)
            elif isinstance(node.get("@graph"), list):
                stack.extend(reversed(node["@graph"]))
            elif isinstance(node.get("itemListElement"), list):
                stack.extend(reversed(node["itemListElement"]))
            elif isinstance(node.get("item"), dict):
                stack.append(node["item"])
    return found


def _date(value: Any) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.date.fromisoformat(value.strip()[:10])
    except ValueError:
        return None


def job_openings(html: str) -> list[JobOpening]:
    """The openings the page lists (see the module docstring), without repeats."""
    parser = _CareersParser()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError:
        pass  # HTMLParser asserts on a few pathological constructs; keep what was read
    parser._close_item()
    openings: dict[str, JobOpening] = {}
    for block in parser.json_ld:
        try:
            document = json.loads(block)
        except ValueError:
            continue
        for posting in _postings(document):
            title = clean_title(str(posting.get("title") or posting.get("name") or ""))
            if title and len(title) <= MAX_TITLE_CHARS and title not in openings:
                openings[title] = JobOpening(title, _date(posting.get("datePosted")))
    if not openings:
        for text in parser.items:
            openings.setdefault(text, JobOpening(text))
    return list(openings.values())[:MAX_OPENINGS]
