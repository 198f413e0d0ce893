"""Configuration, read once at start from the environment (and a ``.env`` file).

Every CLI flag has an environment variable; the names are fixed by CONTRACT.md.
Nothing else in the code base reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runner.api import AgentSettings
from runner.errors import SettingsError

__all__ = ["Settings", "SettingsError", "load_settings"]


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
    # min(concurrency, 10) + 5 (fetching, heartbeat, rescuer, metrics, cron).
    db_pool_size: int | None = Field(default=None, ge=2, le=1000, alias="RUNNER_DB_POOL_SIZE")

    # How often a daemon proves it is alive, and how long without proof before
    # its running attempts are rescued by any other daemon.
    heartbeat_interval: float = Field(default=5.0, gt=0, le=3600, alias="RUNNER_HEARTBEAT_INTERVAL")
    rescue_after: float = Field(default=20.0, gt=0, le=86400, alias="RUNNER_RESCUE_AFTER")
    # Retry backoff: about base, 2*base, 4*base ... capped, with +-25 % jitter.
    retry_base_delay: float = Field(default=1.0, ge=0, le=3600, alias="RUNNER_RETRY_BASE_DELAY")
    retry_max_delay: float = Field(default=60.0, ge=0, le=86400, alias="RUNNER_RETRY_MAX_DELAY")

    # Cron: a schedule's fires missed while no daemon ran are run once (or skipped);
    # schedules are re-read this often when no NOTIFY arrives.
    cron_catchup: Literal["once", "skip"] = Field(default="once", alias="RUNNER_CRON_CATCHUP")
    cron_reload_interval: float = Field(
        default=5.0, gt=0, le=3600, alias="RUNNER_CRON_RELOAD_INTERVAL"
    )

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
        return self.db_pool_size or min(self.concurrency, 10) + 5

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]"), int(port)


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning pydantic's report into one readable message.

    ``overrides`` are keyed by environment-variable name (the CLI passes its flags
    this way), so a message always names the variable the user can fix.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
