"""Configuration, read once at start from the environment (and a ``.env`` file).

Every CLI flag has an environment variable; the names are fixed by CONTRACT.md.
Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runner.api import AgentSettings
from runner.errors import SettingsError

__all__ = ["Settings", "SettingsError", "load_settings", "redact_url"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".agent-runner"), alias="RUNNER_DATA_DIR")

    concurrency: int = Field(default=3, ge=1, le=1000, alias="RUNNER_CONCURRENCY")
    poll_interval: float = Field(default=5.0, gt=0, le=3600, alias="RUNNER_POLL_INTERVAL")
    shutdown_grace: float = Field(default=30.0, ge=0, le=86400, alias="RUNNER_SHUTDOWN_GRACE")
    metrics_addr: str = Field(default="127.0.0.1:9464", alias="RUNNER_METRICS_ADDR")
    log_format: Literal["text", "json"] = Field(default="text", alias="RUNNER_LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="RUNNER_LOG_LEVEL"
    )

    # Connections per daemon. An attempt holds one only to claim, log and finish, never
    # while the agent runs, so the pool need not grow with concurrency: by default
    # min(concurrency, 10) + 6 (fetching, rescuer, metrics, cron, webhooks, control).
    db_pool_size: int | None = Field(default=None, ge=2, le=1000, alias="RUNNER_DB_POOL_SIZE")

    # How often a daemon proves it is alive, and how long without proof before
    # its running attempts are rescued by any other daemon.
    heartbeat_interval: float = Field(default=5.0, gt=0, le=3600, alias="RUNNER_HEARTBEAT_INTERVAL")
    rescue_after: float = Field(default=20.0, gt=0, le=86400, alias="RUNNER_RESCUE_AFTER")
    # Deadline of one heartbeat statement (None: min(5, heartbeat_interval), see
    # ``heartbeat_deadline``): a heartbeat stuck on the network must give up, and try
    # again, long before other daemons would take the silence for death.
    heartbeat_timeout: float | None = Field(
        default=None, gt=0, le=3600, alias="RUNNER_HEARTBEAT_TIMEOUT"
    )
    # How long a caller waits for a pooled connection (None: min(10, rescue_after / 2),
    # see ``pool_timeout``).
    db_pool_timeout: float | None = Field(
        default=None, gt=0, le=3600, alias="RUNNER_DB_POOL_TIMEOUT"
    )
    # How long the daemon rides through an unreachable database (keeping its in-flight
    # agents running) before it exits with a clear message.
    db_outage_limit: float = Field(default=300.0, gt=0, le=86400, alias="RUNNER_DB_OUTAGE_LIMIT")
    # Retry backoff: about base, 2*base, 4*base ... capped, with +-25 % jitter.
    retry_base_delay: float = Field(default=1.0, ge=0, le=3600, alias="RUNNER_RETRY_BASE_DELAY")
    retry_max_delay: float = Field(default=60.0, ge=0, le=86400, alias="RUNNER_RETRY_MAX_DELAY")

    # Cron: a schedule's fires missed while no daemon ran are run once (or skipped);
    # schedules are re-read this often when no NOTIFY arrives.
    cron_catchup: Literal["once", "skip"] = Field(default="once", alias="RUNNER_CRON_CATCHUP")
    cron_reload_interval: float = Field(
        default=5.0, gt=0, le=3600, alias="RUNNER_CRON_RELOAD_INTERVAL"
    )

    # Retention (CONTRACT.md, "Retention"): finished history older than this many days
    # is pruned; 0 keeps it forever. Completed and cancelled tasks, failed tasks, and the
    # LLM cost ledger (llm_calls) each have their own horizon. Every daemon prunes (one at
    # a time) every RUNNER_PRUNE_INTERVAL seconds.
    retention_days: float = Field(default=30, ge=0, le=36500, alias="RUNNER_RETENTION_DAYS")
    failed_retention_days: float = Field(
        default=90, ge=0, le=36500, alias="RUNNER_FAILED_RETENTION_DAYS"
    )
    ledger_retention_days: float = Field(
        default=0, ge=0, le=36500, alias="RUNNER_LEDGER_RETENTION_DAYS"
    )
    prune_interval: float = Field(default=600.0, gt=0, le=86400, alias="RUNNER_PRUNE_INTERVAL")

    # Webhook deliveries (runner/webhooks.py): attempts in flight per daemon, the deadline
    # of one attempt (resolve, connect, answer), and the retry backoff: about base,
    # 2*base, 4*base ... capped, for at least 24 h after the event.
    webhook_concurrency: int = Field(default=4, ge=1, le=100, alias="RUNNER_WEBHOOK_CONCURRENCY")
    webhook_timeout: float = Field(default=10.0, gt=0, le=300, alias="RUNNER_WEBHOOK_TIMEOUT")
    webhook_retry_base_delay: float = Field(
        default=5.0, gt=0, le=3600, alias="RUNNER_WEBHOOK_RETRY_BASE_DELAY"
    )
    webhook_retry_max_delay: float = Field(
        default=3600.0, gt=0, le=86400, alias="RUNNER_WEBHOOK_RETRY_MAX_DELAY"
    )

    # The provider limiter every daemon shares (CONTRACT.md "LLM budgets and limits"):
    # requests, input tokens and output tokens per minute per model; unset = learned
    # from the anthropic-ratelimit-* response headers. RUNNER_LLM_LIMIT_WINDOW is the
    # buckets' window in seconds (60 = per minute; tests shrink it).
    llm_rpm: float | None = Field(default=None, gt=0, alias="RUNNER_LLM_RPM")
    llm_itpm: float | None = Field(default=None, gt=0, alias="RUNNER_LLM_ITPM")
    llm_otpm: float | None = Field(default=None, gt=0, alias="RUNNER_LLM_OTPM")
    llm_limit_window: float = Field(default=60.0, gt=0, le=3600, alias="RUNNER_LLM_LIMIT_WINDOW")
    # Off: calls go out as soon as their budget allows (each still honours its own 429's
    # retry-after); for a proxy that limits on its own, and the benchmark's baseline.
    llm_limiter: bool = Field(default=True, alias="RUNNER_LLM_LIMITER")
    # Off: a later attempt calls the model from its first turn again (the journal is still
    # written, for the transcript); the benchmark's baseline.
    llm_replay: bool = Field(default=True, alias="RUNNER_LLM_REPLAY")

    anthropic_api_key: SecretStr | None = Field(default=None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str | None = Field(default=None, alias="ANTHROPIC_BASE_URL")
    companies_house_api_key: SecretStr | None = Field(default=None, alias="COMPANIES_HOUSE_API_KEY")
    companies_house_base_url: str = Field(
        default="https://api.company-information.service.gov.uk",
        alias="COMPANIES_HOUSE_BASE_URL",
    )

    @field_validator("metrics_addr")
    @classmethod
    def _check_metrics_addr(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected HOST:PORT, for example 127.0.0.1:9464")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
            raise ValueError("expected a libpq URI (postgresql://...) or key=value string")
        return value

    @field_validator("ledger_retention_days")
    @classmethod
    def _check_ledger_retention(cls, value: float) -> float:
        # Budgets count the current UTC month's spend from llm_calls: a shorter ledger
        # would forget spend that still counts, and let a monthly budget be overrun.
        if 0 < value < 31:
            raise ValueError("must be 0 (keep forever) or at least 31 days: monthly LLM "
                             "budgets count this month's spend from the ledger")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        # One message for every contradiction, so a fix is not followed by the next refusal.
        problems = list(_contradictions(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def agent_view(self) -> AgentSettings:
        """What agents see of the settings (``ctx.settings``)."""
        return AgentSettings(
            anthropic_api_key=self.anthropic_api_key,
            anthropic_base_url=self.anthropic_base_url,
            companies_house_api_key=self.companies_house_api_key,
            companies_house_base_url=self.companies_house_base_url,
        )

    @property
    def pool_size(self) -> int:
        return self.db_pool_size or min(self.concurrency, 10) + 6

    @property
    def pool_timeout(self) -> float:
        """Seconds a caller waits for a pooled connection (``RUNNER_DB_POOL_TIMEOUT``)."""
        if self.db_pool_timeout is not None:
            return self.db_pool_timeout
        return min(10.0, self.rescue_after / 2)

    @property
    def heartbeat_deadline(self) -> float:
        """Seconds one heartbeat statement may take (``RUNNER_HEARTBEAT_TIMEOUT``)."""
        if self.heartbeat_timeout is not None:
            return self.heartbeat_timeout
        return min(5.0, self.heartbeat_interval)

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]"), int(port)


def _contradictions(settings: Settings) -> Iterator[str]:
    """Combinations that are each valid alone but cannot work together; each message
    names both variables."""
    beat, rescue = settings.heartbeat_interval, settings.rescue_after
    if rescue < 3 * beat:
        yield (f"RUNNER_RESCUE_AFTER ({rescue:g} s) must be at least three times "
               f"RUNNER_HEARTBEAT_INTERVAL ({beat:g} s): a daemon one late heartbeat "
               "behind would be declared dead and its work run twice")
    if settings.pool_timeout >= rescue:
        yield (f"RUNNER_DB_POOL_TIMEOUT ({settings.pool_timeout:g} s) must be below "
               f"RUNNER_RESCUE_AFTER ({rescue:g} s): a daemon waiting for a connection "
               "would be declared dead while it waits")
    deadline = settings.heartbeat_deadline
    if deadline >= rescue / 2:
        yield (f"RUNNER_HEARTBEAT_TIMEOUT ({deadline:g} s) must be below half of "
               f"RUNNER_RESCUE_AFTER ({rescue:g} s), so a stuck heartbeat is retried "
               "before the daemon's work is rescued")
    elif deadline > beat:
        yield (f"RUNNER_HEARTBEAT_TIMEOUT ({deadline:g} s) must not exceed "
               f"RUNNER_HEARTBEAT_INTERVAL ({beat:g} s): one slow heartbeat would delay "
               "the next")
    if settings.retry_base_delay > settings.retry_max_delay:
        yield (f"RUNNER_RETRY_BASE_DELAY ({settings.retry_base_delay:g} s) must not exceed "
               f"RUNNER_RETRY_MAX_DELAY ({settings.retry_max_delay:g} s)")
    if settings.webhook_retry_base_delay > settings.webhook_retry_max_delay:
        yield (f"RUNNER_WEBHOOK_RETRY_BASE_DELAY ({settings.webhook_retry_base_delay:g} s) must "
               f"not exceed RUNNER_WEBHOOK_RETRY_MAX_DELAY "
               f"({settings.webhook_retry_max_delay:g} s)")
    if settings.db_outage_limit < rescue:
        yield (f"RUNNER_DB_OUTAGE_LIMIT ({settings.db_outage_limit:g} s) must be at least "
               f"RUNNER_RESCUE_AFTER ({rescue:g} s): a daemon would give up on the database "
               "sooner than the others give up on the daemon")


# user:password@ in a URI. The password runs to the last "@" (it may hold a raw "@"),
# so a redaction may hide more than the password, never less.
_URI_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*):(?P<pw>.*)@")
# password=... in a URI's query string, and in a libpq key=value string (maybe quoted).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#]*", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<key>(?<![\w.])password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE
)


def redact_url(value: str) -> str:
    """``value`` with any password it carries replaced by ``***``: a URI's
    ``user:password@`` or ``?password=``, a libpq ``password=...`` keyword."""
    if "://" in value:
        value = _URI_PASSWORD.sub(r"\g<head>:***@", value, count=1)
        return _QUERY_PASSWORD.sub(r"\g<key>***", value)
    return _KEYWORD_PASSWORD.sub(r"\g<key>***", value)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


#: Variables whose values are never echoed, not even when refused.
_SECRET_VARIABLES = frozenset(
    field.alias for field in Settings.model_fields.values()
    if field.alias and _is_secret(field.annotation)
)


def _shown(variable: str, value: object) -> str:
    """How a refused value is quoted back: secrets not at all, URLs without password."""
    if variable in _SECRET_VARIABLES or isinstance(value, SecretStr):
        return ""
    if isinstance(value, str):
        value = redact_url(value)
    return f" (got {value!r})"


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one readable message.

    ``overrides`` are keyed by environment-variable name (the CLI passes its flags
    this way), so a message always names the variable the user can fix. A
    contradiction between variables (no location) names them itself, and never
    quotes the input, which would be every setting, secrets included.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:
                problems.append(message)
                continue
            name = ".".join(str(part) for part in error["loc"])
            problems.append(f"{name}: {message}{_shown(name, error.get('input'))}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
