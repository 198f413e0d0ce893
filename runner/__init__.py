"""agent-runner: a Postgres-only daemon that runs business-intelligence agents."""

__version__ = "0.1.0"
