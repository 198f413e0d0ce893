"""monitoring/: the dashboard is valid Grafana JSON, and the alert rules and dashboard
only name metrics the runner exports (a renamed metric must not silently blank a panel
or disarm an alert). promtool checks of the same files are in
tests/integration/test_promtool.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner import metrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
METRIC_NAME = re.compile(r"\bagent_runner_[a-z0-9_]*[a-z0-9]")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return loaded


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def exported_sample_names() -> set[str]:
    # Make every family carry samples: the model-labelled ones have none until a call,
    # the agent_type-labelled ones none until the daemon names its agent types.
    metrics.set_agent_types(["noop"])
    metrics.llm_call(model="claude-monitoring-test", input_tokens=1, output_tokens=1)
    metrics.set_db_snapshot(metrics.DbSnapshot({}, 0.0, 0.0, 0.0, False, 1.0))
    return {
        sample.name
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_dashboard_is_a_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "job", "agent_type"} <= variables
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat"}
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids))


def test_dashboard_covers_the_requested_views() -> None:
    exprs = "\n".join(dashboard_exprs())
    for name in (
        "agent_runner_tasks", "agent_runner_task_attempts_finished_total",
        "agent_runner_execution_duration_seconds_bucket", "agent_runner_queue_wait_seconds_bucket",
        "agent_runner_in_flight_tasks", "agent_runner_rescued_attempts_total",
        "agent_runner_llm_tokens_total", "agent_runner_llm_cost_usd_total",
        "agent_runner_http_calls_total",
    ):
        assert re.search(rf"\b{name}\b", exprs), name


@pytest.mark.parametrize(
    "source", ["prometheus-rules.yml", "prometheus-rules.test.yml", "grafana-dashboard.json"]
)
def test_monitoring_names_only_exported_metrics(source: str) -> None:
    referenced = set(METRIC_NAME.findall((MONITORING / source).read_text()))
    assert referenced
    assert referenced <= exported_sample_names(), referenced - exported_sample_names()
