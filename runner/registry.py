"""Transitional: the agent registry moved to :mod:`runner.plugins`.

Only ``runner.daemon`` and ``runner.executor`` still import this name; once they import
``runner.plugins`` this module goes.
"""

from __future__ import annotations

from runner.plugins import InvalidPayload, Registry, UnknownAgentType, default_registry

__all__ = ["InvalidPayload", "Registry", "UnknownAgentType", "default_registry"]
