"""runner.metrics: each function moves the right series; the exposition stays bounded.

The registry is process-wide (one process is one scrape target), so tests compare
values before and after rather than assume zeros.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from runner import metrics

# Label names a product metric may carry; ``le`` belongs to histogram buckets.
BOUNDED_LABELS = {"agent_type", "status", "outcome", "model", "kind", "service", "version", "le",
                  "table"}
# What a daemon with this project's plugins passes to set_agent_types at start.
AGENT_TYPES = ("enrichment_agent", "llm_agent", "noop", "opportunity_bot", "scoring_agent")


@pytest.fixture(autouse=True)
def _daemon_agent_types() -> None:
    metrics.set_agent_types(AGENT_TYPES)


def value(name: str, **labels: str) -> float:
    found = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if found is None else found


def delta(name: str, action: Callable[[], object], **labels: str) -> float:
    before = value(name, **labels)
    action()
    return value(name, **labels) - before


def scraped_samples() -> Iterator[Sample]:
    for family in text_string_to_metric_families(metrics.render().decode()):
        yield from family.samples


def snapshot(**changes: object) -> metrics.DbSnapshot:
    fields: dict[str, object] = {
        "task_counts": {"pending": 3, "completed": 7},
        "oldest_pending_age_seconds": 12.5,
        "oldest_processing_age_seconds": 0.0,
        "processing_overdue_seconds": 0.0,
        "paused": False,
        "taken_at": 1_700_000_000.0,
    }
    fields.update(changes)
    return metrics.DbSnapshot(**fields)  # type: ignore[arg-type]


def test_task_started_counts_and_observes_queue_wait() -> None:
    labels = {"agent_type": "noop"}
    started = value("agent_runner_task_attempts_started_total", **labels)
    waits = value("agent_runner_queue_wait_seconds_count", **labels)
    wait_sum = value("agent_runner_queue_wait_seconds_sum", **labels)
    under_1s = value("agent_runner_queue_wait_seconds_bucket", le="1.0", **labels)

    metrics.task_started(agent_type="noop", queue_wait_seconds=0.75)

    assert value("agent_runner_task_attempts_started_total", **labels) == started + 1
    assert value("agent_runner_queue_wait_seconds_count", **labels) == waits + 1
    assert value("agent_runner_queue_wait_seconds_sum", **labels) == pytest.approx(wait_sum + 0.75)
    assert value("agent_runner_queue_wait_seconds_bucket", le="1.0", **labels) == under_1s + 1


def test_negative_queue_wait_from_clock_skew_counts_as_zero() -> None:
    labels = {"agent_type": "scoring_agent"}
    wait_sum = value("agent_runner_queue_wait_seconds_sum", **labels)
    metrics.task_started(agent_type="scoring_agent", queue_wait_seconds=-0.3)
    assert value("agent_runner_queue_wait_seconds_sum", **labels) == wait_sum


@pytest.mark.parametrize("outcome", metrics.ATTEMPT_OUTCOMES)
def test_attempt_finished_counts_outcome_and_duration(outcome: str) -> None:
    labels = {"agent_type": "llm_agent"}
    durations = value("agent_runner_execution_duration_seconds_count", **labels)
    duration_sum = value("agent_runner_execution_duration_seconds_sum", **labels)

    moved = delta(
        "agent_runner_task_attempts_finished_total",
        lambda: metrics.attempt_finished(
            agent_type="llm_agent", outcome=outcome, duration_seconds=2.0
        ),
        outcome=outcome,
        **labels,
    )

    assert moved == 1
    assert value("agent_runner_execution_duration_seconds_count", **labels) == durations + 1
    assert value("agent_runner_execution_duration_seconds_sum", **labels) == pytest.approx(
        duration_sum + 2.0
    )


def test_attempt_outcomes_are_a_closed_vocabulary() -> None:
    with pytest.raises(ValueError, match="unknown attempt outcome 'succeeded'"):
        metrics.attempt_finished(agent_type="noop", outcome="succeeded", duration_seconds=1.0)


def test_unknown_agent_type_is_counted_as_other() -> None:
    moved = delta(
        "agent_runner_task_attempts_started_total",
        lambda: metrics.task_started(agent_type="made_up_agent", queue_wait_seconds=0.0),
        agent_type="other",
    )
    assert moved == 1
    assert not any(s.labels.get("agent_type") == "made_up_agent" for s in scraped_samples())


def test_a_newly_loaded_agent_type_gets_its_own_series() -> None:
    def exported(agent_type: str) -> set[tuple[str, str]]:
        return {(s.name, s.labels.get("outcome", "")) for s in scraped_samples()
                if s.labels.get("agent_type") == agent_type}

    # Not loaded: counted as "other", and no series of its own.
    other = delta("agent_runner_cron_fires_total", lambda: metrics.cron_fired("echo_agent"),
                  agent_type="other")
    assert other == 1 and exported("echo_agent") == set()

    metrics.set_agent_types([*AGENT_TYPES, "echo_agent"])
    series = exported("echo_agent")
    assert ("agent_runner_task_attempts_started_total", "") in series
    assert ("agent_runner_cron_fires_total", "") in series
    assert {o for name, o in series if name == "agent_runner_task_attempts_finished_total"} \
        == set(metrics.ATTEMPT_OUTCOMES)
    assert value("agent_runner_task_attempts_started_total", agent_type="echo_agent") == 0
    assert delta("agent_runner_cron_fires_total", lambda: metrics.cron_fired("echo_agent"),
                 agent_type="echo_agent") == 1

    # A later call replaces the set; the series already exported stay.
    metrics.set_agent_types(AGENT_TYPES)
    assert delta("agent_runner_cron_fires_total", lambda: metrics.cron_fired("echo_agent"),
                 agent_type="other") == 1
    assert ("agent_runner_cron_fires_total", "") in exported("echo_agent")


def test_every_known_combination_is_exported_from_the_start() -> None:
    finished = {
        (s.labels["agent_type"], s.labels["outcome"])
        for s in scraped_samples()
        if s.name == "agent_runner_task_attempts_finished_total"
    }
    for agent_type in AGENT_TYPES:
        for outcome in metrics.ATTEMPT_OUTCOMES:
            assert (agent_type, outcome) in finished
    http = {
        (s.labels["service"], s.labels["outcome"])
        for s in scraped_samples()
        if s.name == "agent_runner_http_calls_total"
    }
    assert http >= {(s, o) for s in metrics.HTTP_SERVICES for o in metrics.HTTP_OUTCOMES}


def test_rows_pruned_counts_by_table_from_zero() -> None:
    exported = {s.labels["table"] for s in scraped_samples()
                if s.name == "agent_runner_pruned_rows_total"}
    assert exported == set(metrics.PRUNED_TABLES)
    tasks = value("agent_runner_pruned_rows_total", table="agent_tasks")
    events = value("agent_runner_pruned_rows_total", table="procrastinate_events")
    metrics.rows_pruned({"agent_tasks": 5, "procrastinate_events": 15, "llm_calls": 0})
    assert value("agent_runner_pruned_rows_total", table="agent_tasks") == tasks + 5
    assert value("agent_runner_pruned_rows_total", table="procrastinate_events") == events + 15
    with pytest.raises(ValueError, match="unknown pruned table"):
        metrics.rows_pruned({"companies": 1})
    with pytest.raises(ValueError, match=">= 0"):
        metrics.rows_pruned({"agent_tasks": -1})


def test_llm_call_counts_tokens_by_kind_and_cost() -> None:
    model = "claude-test-metrics"
    before = {k: value("agent_runner_llm_tokens_total", model=model, kind=k)
              for k in metrics.TOKEN_KINDS}
    cost = value("agent_runner_llm_cost_usd_total", model=model)
    calls = value("agent_runner_llm_calls_total", model=model)

    metrics.llm_call(
        model=model, input_tokens=100, output_tokens=20,
        cache_creation_input_tokens=5, cache_read_input_tokens=300, cost_usd=0.0125,
    )

    moved = {k: value("agent_runner_llm_tokens_total", model=model, kind=k) - before[k]
             for k in metrics.TOKEN_KINDS}
    assert moved == {"input": 100, "output": 20, "cache_creation": 5, "cache_read": 300}
    assert value("agent_runner_llm_cost_usd_total", model=model) == pytest.approx(cost + 0.0125)
    assert value("agent_runner_llm_calls_total", model=model) == calls + 1


def test_llm_call_refuses_negative_usage() -> None:
    with pytest.raises(ValueError):
        metrics.llm_call(model="m", input_tokens=-1, output_tokens=0)


def test_model_label_admits_a_bounded_number_of_values() -> None:
    bound = metrics.BoundedLabelValues(3)
    admitted = [bound(m) for m in ("a", "b", "c", "d", "a", "e")]
    assert admitted == ["a", "b", "c", "other", "a", "other"]
    assert metrics.BoundedLabelValues(3, max_length=5)("much-too-long") == "other"


def test_http_call_counts_service_and_outcome() -> None:
    moved = delta(
        "agent_runner_http_calls_total",
        lambda: metrics.http_call(service="companies_house", outcome="rate_limited"),
        service="companies_house",
        outcome="rate_limited",
    )
    assert moved == 1


@pytest.mark.parametrize(
    ("service", "outcome"), [("example.com", "ok"), ("website", "418"), ("website", "")]
)
def test_http_labels_are_closed_vocabularies(service: str, outcome: str) -> None:
    with pytest.raises(ValueError, match="unknown HTTP"):
        metrics.http_call(service=service, outcome=outcome)


@pytest.mark.parametrize(
    ("status_code", "outcome"),
    [(200, "ok"), (204, "ok"), (304, "ok"), (400, "client_error"), (401, "client_error"),
     (404, "not_found"), (429, "rate_limited"), (500, "server_error"), (503, "server_error")],
)
def test_classify_http_status(status_code: int, outcome: str) -> None:
    assert metrics.classify_http_status(status_code) == outcome
    assert outcome in metrics.HTTP_OUTCOMES


def test_rescued_and_cron_fired() -> None:
    assert delta("agent_runner_rescued_attempts_total", lambda: metrics.rescued(3)) == 3
    assert delta("agent_runner_rescued_attempts_total", lambda: metrics.rescued(0)) == 0
    with pytest.raises(ValueError):
        metrics.rescued(-1)
    assert delta(
        "agent_runner_cron_fires_total",
        lambda: metrics.cron_fired("enrichment_agent"),
        agent_type="enrichment_agent",
    ) == 1


def test_daemon_gauges() -> None:
    metrics.daemon_started("9.9.9")
    assert value("agent_runner_build_info", version="9.9.9") == 1
    assert value("agent_runner_daemon_up") == 1
    metrics.daemon_started("1.2.3")
    # one build per process: the previous version's series is gone
    assert metrics.REGISTRY.get_sample_value(
        "agent_runner_build_info", {"version": "9.9.9"}) is None
    metrics.daemon_stopping()
    assert value("agent_runner_daemon_up") == 0

    metrics.heartbeat(at=1_700_000_123.5)
    assert value("agent_runner_last_heartbeat_timestamp_seconds") == 1_700_000_123.5
    metrics.heartbeat()
    assert value("agent_runner_last_heartbeat_timestamp_seconds") > 1_700_000_123.5

    metrics.set_in_flight(4)
    assert value("agent_runner_in_flight_tasks") == 4
    metrics.set_in_flight(0)
    assert value("agent_runner_in_flight_tasks") == 0


def test_db_collector_emits_nothing_before_the_first_snapshot() -> None:
    collector = metrics.DbSnapshotCollector()
    families = {family.name: family for family in collector.collect()}
    assert "agent_runner_tasks" in families
    assert all(not family.samples for family in families.values())


def test_db_snapshot_is_served_with_every_status_zero_filled() -> None:
    metrics.set_db_snapshot(snapshot(
        task_counts={"pending": 3, "completed": 7, "bogus": 99},
        processing_overdue_seconds=42.0, paused=True,
    ))

    tasks = {
        s.labels["status"]: s.value for s in scraped_samples() if s.name == "agent_runner_tasks"
    }
    assert tasks == {"pending": 3, "processing": 0, "completed": 7, "failed": 0, "cancelled": 0}
    assert value("agent_runner_oldest_pending_age_seconds") == 12.5
    assert value("agent_runner_oldest_processing_age_seconds") == 0
    assert value("agent_runner_processing_overdue_seconds") == 42
    assert value("agent_runner_paused") == 1
    assert value("agent_runner_db_snapshot_timestamp_seconds") == 1_700_000_000.0


def test_exposition_is_product_metrics_plus_standard_collectors_with_bounded_labels() -> None:
    metrics.llm_call(model="claude-bounded", input_tokens=1, output_tokens=1)
    metrics.set_db_snapshot(snapshot())
    names = set()
    for sample in scraped_samples():
        names.add(sample.name)
        assert re.match(r"^(agent_runner|process|python)_", sample.name), sample.name
        if sample.name.startswith("agent_runner_"):
            assert set(sample.labels) <= BOUNDED_LABELS, sample
    assert {"process_cpu_seconds_total", "python_info", "python_gc_collections_total"} <= names
    assert "agent_runner_tasks" in names


def test_render_is_the_classic_text_format() -> None:
    assert metrics.CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    assert b"# TYPE agent_runner_task_attempts_finished_total counter" in metrics.render()
