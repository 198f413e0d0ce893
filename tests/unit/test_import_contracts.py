"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and would catch a
runner module importing the agents or an agent reaching past runner.api."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


def _copy_tree(tmp_path: Path) -> Path:
    for name in ("runner", "agents"):
        shutil.copytree(REPO / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_contracts() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_runner_module_importing_agents_breaks_the_build(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    daemon = root / "runner" / "daemon.py"
    daemon.write_text(daemon.read_text() + "\nimport agents.noop  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "runner.daemon -> agents.noop" in result.stdout


def test_an_agent_reaching_past_runner_api_breaks_the_build(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    noop = root / "agents" / "noop.py"
    noop.write_text(noop.read_text() + "\nimport runner.settings  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "agents.noop -> runner.settings" in result.stdout
