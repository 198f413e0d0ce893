"""Secrets out of what the runner writes: log lines, CLI messages, stored rows.

Settings hold secrets as ``SecretStr`` and no code logs settings or builds messages from
them. This is the defence in depth for what reaches a message anyway: libpq quoting a
``DATABASE_URL`` it cannot parse, an API's 401 body echoing the key it refused, an HTTP
error naming a URL with credentials, a model repeating a key it was tricked into
seeing. A :class:`Redactor` replaces, with ``***``:

* every configured secret value (each ``SecretStr`` setting: ``ANTHROPIC_API_KEY``,
  ``COMPANIES_HOUSE_API_KEY``; and the password in ``DATABASE_URL``), also as it
  appears JSON-escaped and in an HTTP basic-auth header;
* any URL's ``user:password@`` and any ``password=...`` (a libpq keyword or a query
  parameter), configured or not.

It is applied to every formatted log record (:func:`runner.logs.configure`), every
message the CLI prints, and, in the daemon, every string written to Postgres
(:func:`runner.store.text.make_storable`): error messages, task logs, outputs, the LLM
ledger and journal. That last one leaves the database password out on purpose
(:meth:`Redactor.for_storage`): it is not a random token like an API key, and a short
or common one (``postgres``) would be cut out of business text; it reaches stored rows
only inside a connection string, where the URL and keyword patterns catch it.

Values shorter than four characters are not searched for (they would shred every text
they occur in and protect nothing).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from typing import Final
from urllib.parse import unquote

import psycopg
from pydantic import SecretStr

from runner.settings import Settings

__all__ = ["MASK", "Redactor", "database_passwords", "redact_credentials"]

MASK: Final = "***"
MIN_SECRET_CHARS: Final = 4

# scheme://user:password@ anywhere in a text. The password runs to the last "@" before
# the authority ends ("/", "?", "#", whitespace, a quote), so a raw "@" in it is hidden
# too; a redaction may hide more than the password, never less.
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@'\"<>]*):[^\s/?#'\"<>]*@"
)
# password=... as a libpq keyword (maybe quoted) or a URI query parameter; also
# sslpassword=.
_KEYWORD_PASSWORD = re.compile(
    r"(?P<key>password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&#'\"]+)", re.IGNORECASE
)
# The password of a URI, as written in it (percent-encoded or not, valid or not).
_URI_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:(?P<pw>[^/?#]*)@")


def redact_credentials(text: str) -> str:
    """``text`` with the passwords of URLs and ``password=`` keywords replaced."""
    if "://" in text:
        text = _URL_CREDENTIALS.sub(rf"\g<head>:{MASK}@", text)
    if "assword" in text or "ASSWORD" in text:
        text = _KEYWORD_PASSWORD.sub(rf"\g<key>{MASK}", text)
    return text


def database_passwords(conninfo: str) -> set[str]:
    """The password a libpq URI or key=value string carries, in every form a message
    may quote it: as written, percent-decoded, and as libpq parsed it. Empty when it
    carries none; a string libpq refuses still yields what the patterns find."""
    found: set[str] = set()
    match = _URI_PASSWORD.match(conninfo)
    if match:
        found |= {match["pw"], unquote(match["pw"])}
    for keyword in _KEYWORD_PASSWORD.finditer(conninfo):
        value = keyword[0][len(keyword["key"]):]
        found |= {value, value.strip("'")}
    try:
        parsed = psycopg.conninfo.conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        parsed = None
    if isinstance(parsed, str):
        found.add(parsed)
    return {value for value in found if value}


class Redactor:
    """Replaces the given secret values, and credentials in URLs, with ``***``.
    Callable on a string; the same instance serves every connection of a pool."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for secret in secrets if len(secret) >= MIN_SECRET_CHARS
                 for form in _forms(secret)}
        # Longest first, so that a secret containing another is replaced whole.
        self._secrets = sorted(forms, key=len, reverse=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """Every secret ``settings`` hold, the database password included: for log
        lines and messages."""
        secrets = list(_secret_settings(settings))
        if settings.database_url:
            secrets.extend(database_passwords(settings.database_url))
        return cls(secrets)

    @classmethod
    def for_storage(cls, settings: Settings) -> Redactor:
        """The API keys (not the database password: see the module's note): for what
        the daemon writes to Postgres."""
        return cls(_secret_settings(settings))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return redact_credentials(text)


def _forms(secret: str) -> Iterator[str]:
    yield secret
    # Inside a JSON document (a JSON log line, an API's error body).
    yield json.dumps(secret)[1:-1]
    # In an Authorization header: HTTP basic auth with the secret as user name (how
    # Companies House takes its key) or as password.
    for credentials in (f"{secret}:", f":{secret}"):
        yield base64.b64encode(credentials.encode()).decode()


def _secret_settings(settings: Settings) -> Iterator[str]:
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
