"""The goal a stream agent works towards: the payload models and their resolution.

``opportunity_bot`` and ``scoring_agent`` take the same input (CONTRACT.md, "Agents"):
``{stream_id, goal_context: {goal_criteria: {industry, location, employee_count: {min,
max}}, target_metrics: {companies_to_find, min_quality_score}}}``.

* ``goal_context`` and either of its two sections may be left out: a missing section
  is taken from the stream's own ``streams.goal_criteria`` / ``streams.target_metrics``
  (so a dependent task enqueued with only ``{stream_id}`` works to the stream's goal),
  and from the defaults below when the stream has none.
* ``industry`` and ``location`` take a name or a list of names (see
  ``agents/taxonomy.py``); an empty list means "no such criterion".
* Unknown top-level keys are refused (a misspelt ``goal_context`` must not silently
  fall back to the stream's goal). Inside ``goal_criteria`` and ``target_metrics``
  other keys are accepted and ignored (the agent logs them): those two objects are
  free-form in the ``streams`` table, where other tools may keep more criteria.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agents import taxonomy
from agents.store import streams as store
from runner.api import AgentContext, FailPermanently, describe_validation_error

DEFAULT_COMPANIES_TO_FIND = 50
DEFAULT_MIN_QUALITY_SCORE = 4.0


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


NameList = Annotated[list[str], BeforeValidator(_one_or_many)]


class EmployeeCount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int | None = Field(default=None, ge=0, le=10_000_000)
    max: int | None = Field(default=None, ge=0, le=10_000_000)

    @model_validator(mode="after")
    def _ordered(self) -> EmployeeCount:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class GoalCriteria(BaseModel):
    model_config = ConfigDict(extra="allow")

    industry: NameList = Field(default_factory=list)
    location: NameList = Field(default_factory=list)
    employee_count: EmployeeCount | None = None

    @field_validator("industry")
    @classmethod
    def _known_industries(cls, names: list[str]) -> list[str]:
        for name in names:
            taxonomy.lookup_industry(name)  # raises UnknownName, a ValueError
        return [name.strip() for name in names]

    @field_validator("location")
    @classmethod
    def _place_names(cls, names: list[str]) -> list[str]:
        return [taxonomy.check_place_name(name) for name in names]


class TargetMetrics(BaseModel):
    model_config = ConfigDict(extra="allow")

    companies_to_find: int = Field(default=DEFAULT_COMPANIES_TO_FIND, ge=1, le=100_000)
    min_quality_score: float = Field(
        default=DEFAULT_MIN_QUALITY_SCORE, ge=0, le=5, allow_inf_nan=False
    )


class GoalContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal_criteria: GoalCriteria | None = None
    target_metrics: TargetMetrics | None = None


class StreamTaskInput(BaseModel):
    """The payload of both stream agents."""

    model_config = ConfigDict(extra="forbid")

    stream_id: UUID
    goal_context: GoalContext | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StreamGoal:
    """A stream and its goal, resolved against the taxonomy and the register."""

    stream_id: UUID
    org_id: UUID
    stream_name: str
    #: the database's current date: every date rule of one run uses this one day
    today: dt.date
    industries: tuple[str, ...]
    locations: tuple[str, ...]
    industry: taxonomy.IndustryFilter | None
    location: taxonomy.LocationFilter | None
    employees_min: int | None
    employees_max: int | None
    has_employee_range: bool
    companies_to_find: int
    min_quality_score: Decimal
    #: goal_criteria / target_metrics keys the agents do not use
    ignored_keys: tuple[str, ...]

    @property
    def criteria_count(self) -> int:
        return (self.industry is not None) + (self.location is not None) \
            + self.has_employee_range

    def describe(self) -> dict[str, Any]:
        """The goal as it went into the run, for the execution's results summary."""
        return {
            "industry": list(self.industries),
            "location": list(self.locations),
            "employee_count": (
                {"min": self.employees_min, "max": self.employees_max}
                if self.has_employee_range else None
            ),
            "companies_to_find": self.companies_to_find,
            "min_quality_score": float(self.min_quality_score),
        }


def _stream_section(
    model: type[GoalCriteria] | type[TargetMetrics], value: Mapping[str, Any], where: str
) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = describe_validation_error(exc, prefix=where)
        raise FailPermanently(f"invalid goal in the stream: {problems}") from None


async def load_stream_goal(ctx: AgentContext, payload: StreamTaskInput) -> StreamGoal:
    """The stream and the goal to work to, or :class:`FailPermanently` naming the field
    (no such stream, another organization's stream, an unknown place)."""
    async with ctx.connection() as conn:
        stream = await store.fetch_stream(conn, payload.stream_id)
        if stream is None:
            raise FailPermanently(f"stream_id: no stream with id {payload.stream_id}")
        if stream.org_id != ctx.agent.org_id:
            raise FailPermanently(
                f"stream_id: stream {payload.stream_id} belongs to another organization "
                "than this agent"
            )
        context = payload.goal_context or GoalContext()
        criteria: GoalCriteria = context.goal_criteria or _stream_section(
            GoalCriteria, stream.goal_criteria, "streams.goal_criteria")
        metrics: TargetMetrics = context.target_metrics or _stream_section(
            TargetMetrics, stream.target_metrics, "streams.target_metrics")
        # Names that are not a known country or region may be post towns or counties:
        # only the register can tell, so look them up now, in the same short read.
        unresolved = {
            name: taxonomy.place_key(name) for name in criteria.location
            if taxonomy.lookup_location(name) is None
        }
        found = await store.find_places(conn, stream.org_id, sorted(set(unresolved.values())))
    location: taxonomy.LocationFilter | None = None
    for name in criteria.location:
        place = taxonomy.lookup_location(name)
        if place is None:
            is_town, is_county = found.get(unresolved[name], (False, False))
            if not (is_town or is_county):
                raise FailPermanently(
                    f"goal_context.goal_criteria.location: {taxonomy.unknown_location(name)}")
            place = taxonomy.town_or_county(
                unresolved[name], is_town=is_town, is_county=is_county)
        location = place if location is None else location | place
    employees = criteria.employee_count
    has_range = employees is not None and (employees.min is not None or employees.max is not None)
    return StreamGoal(
        stream_id=payload.stream_id,
        org_id=stream.org_id,
        stream_name=stream.name,
        today=stream.today,
        industries=tuple(criteria.industry),
        locations=tuple(criteria.location),
        industry=taxonomy.resolve_industries(criteria.industry) if criteria.industry else None,
        location=location,
        employees_min=employees.min if employees is not None else None,
        employees_max=employees.max if employees is not None else None,
        has_employee_range=has_range,
        companies_to_find=metrics.companies_to_find,
        # Decimal from the float's shortest repr: 4.0 stays 4.0, never 3.99999...
        min_quality_score=Decimal(repr(metrics.min_quality_score)),
        ignored_keys=tuple(sorted(
            [f"goal_criteria.{key}" for key in (criteria.model_extra or {})]
            + [f"target_metrics.{key}" for key in (metrics.model_extra or {})]
        )),
    )
