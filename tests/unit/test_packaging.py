"""The wheel carries what an installed daemon needs: migrations, agent stores, prices."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from runner.migrate import bundled_migrations
from tests.harness import REPO


def test_wheel_contains_migrations_and_agent_data(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("agent_runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for migration in bundled_migrations():
        assert f"runner/sql/{migration.name}" in names
    assert "agents/store/__init__.py" in names
    assert "agents/prices.json" in names
    assert {"agents/commands.py", "agents/demo.py"} <= names
    assert any(name.endswith("entry_points.txt") for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    declared = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "agent-runner = runner.cli:main" in declared
    # The engine finds this project's agents and their commands as plugins.
    assert "[agent_runner.agents]\nenrichment_agent = agents.enrichment_agent:EnrichmentAgent" \
        in declared
    assert "noop = agents.noop:NoopAgent" in declared
    assert "[agent_runner.commands]\ndemo = agents.commands:DEMO" in declared
