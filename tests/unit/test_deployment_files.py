"""The deployment files pass their linters and stay in step with the code.

``systemd-analyze verify`` checks the unit as systemd would load it, including that
``ExecStart=`` names an existing executable. The unit says ``/usr/local/bin/agent-runner``
(where ``pip install .`` as root puts the console script on the target host), which
need not exist on a development machine, so the test verifies a copy whose only change
is that path, pointed at this environment's real ``agent-runner``.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.settings import Settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "agent-runner.service"
ENV_EXAMPLE = REPO / "systemd" / "agent-runner.env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UNIT_EXEC_START = "ExecStart=/usr/local/bin/agent-runner run"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _console_script() -> Path:
    script = Path(sys.executable).parent / "agent-runner"
    assert script.is_file(), f"the project is not installed in this environment ({script})"
    return script


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert text.count(UNIT_EXEC_START) == 1
    copy = tmp_path / UNIT.name  # verify derives the unit name from the file name
    copy.write_text(text.replace(UNIT_EXEC_START, f"ExecStart={_console_script()} run"))

    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, cwd=tmp_path, check=False
    )

    assert (result.returncode, result.stderr) == (0, ""), result.stderr


#: What a daemon does after its grace period (hand interrupted tasks back, unregister in
#: at most 5 s, close its pool, stop an embedded Postgres): the unit's documented
#: TimeoutStopSec = RUNNER_SHUTDOWN_GRACE + STOP_MARGIN_SECONDS. Measured with a real
#: daemon in tests/acceptance/test_deployment.py.
STOP_MARGIN_SECONDS = 15


def test_systemd_unit_outlasts_the_shutdown_grace() -> None:
    unit = _unit_settings()
    assert unit["Type"] == ["notify"]
    assert unit["KillSignal"] == ["SIGTERM"]
    environment = dict(entry.split("=", 1) for entry in unit["Environment"])
    grace = float(environment["RUNNER_SHUTDOWN_GRACE"])
    # Pinned beside TimeoutStopSec, and the same as the daemon's own default.
    assert grace == Settings.model_fields["shutdown_grace"].default
    assert float(unit["TimeoutStopSec"][0]) >= grace + STOP_MARGIN_SECONDS, (
        "systemd must not SIGKILL the daemon while it is still handing work back"
    )
    # The rule is written where an operator changing either will read it.
    assert f"TimeoutStopSec = RUNNER_SHUTDOWN_GRACE + {STOP_MARGIN_SECONDS}" in UNIT.read_text()
    assert f"at least this + {STOP_MARGIN_SECONDS}" in ENV_EXAMPLE.read_text()
    # ... and the Dockerfile's advice for `docker stop` follows the same rule.
    assert f"-t {grace + STOP_MARGIN_SECONDS:g}" in DOCKERFILE.read_text()
    heartbeat = Settings.model_fields["heartbeat_interval"].default
    assert heartbeat < float(unit["WatchdogSec"][0]) / 2, "each heartbeat feeds the watchdog"


def test_env_example_names_only_real_settings() -> None:
    known = {field.alias for field in Settings.model_fields.values()}
    named = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert named, "the example names no variables"
    assert named <= known, f"not settings: {sorted(named - known)}"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_runs_the_daemon_unwrapped_and_unprivileged() -> None:
    instructions = dict(_dockerfile_instructions())
    # JSON (exec) form: no /bin/sh -c in between to swallow SIGTERM.
    assert json.loads(instructions["ENTRYPOINT"]) == ["agent-runner"]
    assert json.loads(instructions["CMD"]) == ["run"]
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    user = instructions["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0


def test_docker_build_context_holds_every_package() -> None:
    """A package added to pyproject.toml must also reach the image."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    package_dirs: dict[str, str] = setuptools.get("package-dir", {})
    needed = {
        package_dirs.get(p, p.replace(".", "/")).split("/")[0] for p in setuptools["packages"]
    }
    copied = {
        source.rstrip("/")
        for keyword, rest in _dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    included = {
        line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line[:1] == "!"
    }
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    assert copied <= included, f"copied but excluded by .dockerignore: {sorted(copied - included)}"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Health", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_docker_healthcheck_follows_healthz(
    health_server: tuple[http.server.HTTPServer, type[_Health]],
) -> None:
    healthcheck = dict(_dockerfile_instructions())["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[0] == "python"
    server, handler = health_server

    def check(port: int) -> int:
        env = {"RUNNER_METRICS_ADDR": f"0.0.0.0:{port}"}
        return subprocess.run(
            [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False
        ).returncode

    port = server.server_address[1]
    assert check(port) == 0
    handler.status = 503
    assert check(port) != 0
    server.shutdown()
    server.server_close()
    assert check(port) != 0
