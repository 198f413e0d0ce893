"""Issue 3 end to end through the real daemon: import a generated Companies House CSV
with the CLI, then one workflow run of opportunity -> enrichment -> scoring, with the
Companies House API and company websites served by stand-ins on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from agents import companies_generator
from tests.harness import REPO, daemon_env, daemons, query, wait_until
from tests.standins.companies_house import CompaniesHouseStandIn, running_companies_house
from tests.standins.websites import WebsitesStandIn, running_websites

pytestmark = pytest.mark.slow

GOAL_CRITERIA = {"industry": ["SaaS", "FinTech"], "location": ["UK", "Ireland"],
                 "employee_count": {"min": 10, "max": 500}}
TARGET = {"companies_to_find": 25, "min_quality_score": 3.0}
OPPORTUNITY_KEYS = {"companies_found", "items_created", "qualified_count",
                    "avg_quality_score", "high_quality_count"}
ENRICHMENT_KEYS = {"items_updated", "enriched_count"}
SCORING_KEYS = {"items_updated", "avg_quality_score", "high_quality_count"}


@pytest.fixture
def ch() -> Iterator[CompaniesHouseStandIn]:
    with running_companies_house(api_key="ch-key") as standin:
        yield standin


@pytest.fixture
def sites() -> Iterator[WebsitesStandIn]:
    with running_websites() as standin:
        yield standin


def _band(score: Decimal) -> str:
    if score >= Decimal("4.5"):
        return "critical"
    if score >= Decimal("4.0"):
        return "high"
    if score >= Decimal("3.0"):
        return "medium"
    return "low"


def test_import_then_workflow_through_the_daemon(
    db_url: str, tmp_path: Path, ch: CompaniesHouseStandIn, sites: WebsitesStandIn
) -> None:
    csv_path = tmp_path / "BasicCompanyData.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as out:
        companies_generator.generate(out, 3000, seed=11)
    imported = subprocess.run(
        [sys.executable, "-m", "runner.cli", "import-companies", str(csv_path), "--json"],
        cwd=REPO, env=daemon_env(db_url), capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["inserted"] == 3000

    # Companies House knows the software and finance companies, and some have websites
    # (the stand-in sites, on 127.0.0.1, which the agent is configured to allow).
    rows = query(db_url, """
        SELECT company_number, name, sic_codes, coalesce(post_town, 'London'),
               coalesce(postcode, 'EC1A 1AA')
        FROM companies WHERE sic_codes && '{62011,62012,62020,62090,63110,64999,66190}'
        ORDER BY company_number LIMIT 400""")
    for number, name, sic_codes, town, postcode in rows:
        ch.add_company(number, name=name, sic_codes=list(sic_codes), locality=town,
                       postal_code=postcode)
    query(db_url, """UPDATE companies SET website = CASE WHEN random() < 0.5 THEN %s ELSE %s END
                     WHERE company_number = ANY(%s) RETURNING id""",
          (sites.site_url("saas"), sites.site_url("wordpress"), [r[0] for r in rows[::3]]))

    enrichment_config = {
        "fetch_websites": True,
        "website": {"allow_private_addresses": True, "deadline_seconds": 3},
        "companies_house": {"max_attempts": 2, "backoff_base_seconds": 0.01,
                            "backoff_max_seconds": 0.05, "max_rate_limit_wait_seconds": 2},
    }
    query(db_url, """
        INSERT INTO ai_agents (name, agent_type, configuration) VALUES
            ('discovery', 'opportunity_bot', '{}'),
            ('enrichment', 'enrichment_agent', %s),
            ('scoring', 'scoring_agent', '{}') RETURNING id""", (json.dumps(enrichment_config),))
    stream_id = query(db_url, "INSERT INTO streams (name, goal_criteria, target_metrics) "
                              "VALUES ('pipeline', %s, %s) RETURNING id",
                      (json.dumps(GOAL_CRITERIA), json.dumps(TARGET)))[0][0]
    query(db_url, """
        INSERT INTO stream_agent_assignments
            (stream_id, agent_id, execution_order, depends_on_agent_ids)
        SELECT %(s)s, a.id, v.ord,
               coalesce((SELECT array_agg(d.id) FROM ai_agents d WHERE d.name = v.dep), '{}')
        FROM (VALUES ('discovery', 1, NULL), ('enrichment', 2, 'discovery'),
                     ('scoring', 3, 'enrichment')) v(name, ord, dep)
        JOIN ai_agents a ON a.name = v.name RETURNING id""", {"s": stream_id})

    env = {"COMPANIES_HOUSE_API_KEY": "ch-key", "COMPANIES_HOUSE_BASE_URL": ch.url}
    with daemons(db_url, tmp_path / "daemon", **env):
        run_id = query(db_url, "SELECT trigger_stream_workflow(%s)", (stream_id,))[0][0]
        wait_until(lambda: query(db_url, "SELECT status FROM workflow_runs WHERE id = %s",
                                 (run_id,))[0][0] == "completed",
                   timeout=100, interval=0.5, message="the workflow run to complete")

    outputs = {name: output for name, output in query(db_url, """
        SELECT a.name, t.output FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id
        WHERE t.workflow_run_id = %s AND t.status = 'completed'""", (run_id,))}
    assert set(outputs) == {"discovery", "enrichment", "scoring"}
    discovery, enrichment, scoring = (outputs["discovery"], outputs["enrichment"],
                                      outputs["scoring"])
    assert set(discovery) == OPPORTUNITY_KEYS
    assert ENRICHMENT_KEYS <= set(enrichment)
    assert set(scoring) == SCORING_KEYS

    items = query(db_url, """
        SELECT si.quality_score, si.priority, si.position, si.enrichment_status
        FROM stream_items si WHERE si.stream_id = %s ORDER BY si.position""", (stream_id,))
    count = len(items)
    assert 0 < count <= TARGET["companies_to_find"]
    assert discovery["items_created"] == count
    assert discovery["qualified_count"] <= discovery["items_created"]
    assert discovery["companies_found"] >= count
    assert enrichment["items_updated"] == count
    assert 0 < enrichment["enriched_count"] <= count
    assert scoring["items_updated"] == count
    assert scoring["high_quality_count"] == sum(1 for i in items if i[0] >= 4)
    average = sum(i[0] for i in items) / count
    assert abs(Decimal(str(scoring["avg_quality_score"])) - average) < Decimal("0.01")
    for score, priority, _, status in items:
        assert Decimal(0) <= score <= Decimal(5)
        assert priority == _band(score)
        assert status in {"enriched", "not_found", "failed"}
    assert [i[2] for i in items] == list(range(1, count + 1))
    # Both stand-ins were really used, and one execution each completed.
    assert any(r.path.startswith("/company/") for r in ch.requests)
    assert sites.requests
    assert query(db_url, "SELECT count(*) FROM agent_executions e JOIN agent_tasks t "
                         "ON t.id = e.task_id WHERE t.workflow_run_id = %s "
                         "AND e.status = 'completed'", (run_id,))[0][0] == 3
