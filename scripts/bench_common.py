"""Shared plumbing for the benchmarks (``scripts/bench_*.py``).

The benchmarks are scripts, not tests: each creates its own scratch database on the
server named by ``AGENT_RUNNER_TEST_ADMIN_URL`` (the one the test suite uses), runs
real daemons as subprocesses against it, prints its figures next to their goals, and
always cleans up (databases dropped ``WITH (FORCE)``, subprocesses killed by pid).

A benchmark ends its output with one ``RESULT {json}`` line; ``bench_all.sh`` collects
those lines into its summary table, so the human-readable lines above are free to change.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Scripts run as ``python scripts/bench_x.py``: sys.path[0] is scripts/, so the repo root
# is added to reach ``runner`` and the stand-ins under ``tests/`` from a checkout.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402  (after the sys.path set-up above)

ADMIN_URL = os.environ.get(
    "AGENT_RUNNER_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: Logs of the daemons a benchmark starts (git-ignored), kept for post-mortems.
OUT_DIR = REPO / "scripts" / "out"
#: The checkout whose daemon is measured: this one, or another one named by
#: ``BENCH_CHECKOUT`` (a worktree with a candidate change) to compare the two.
CHECKOUT = Path(os.environ.get("BENCH_CHECKOUT") or REPO).resolve()


# -- scratch databases ---------------------------------------------------------------


def database_url(name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


def _admin(statement: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """A fresh database migrated by ``runner.migrate.migrate`` (which also installs
    procrastinate's schema); dropped on the way out, whatever happened."""
    from runner.migrate import migrate

    name = f"bench_{prefix}_{secrets.token_hex(4)}"
    _admin(f"CREATE DATABASE {name}")
    try:
        url = database_url(name)
        migrate(url)
        yield url
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def execute(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """One statement on a short-lived autocommit connection; its rows (or [])."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(url: str, sql: str, params: Any = None) -> Any:
    return execute(url, sql, params)[0][0]


def create_agent(url: str, name: str, agent_type: str = "noop", **columns: Any) -> None:
    names = ["name", "agent_type", *columns]
    placeholders = ", ".join(["%s"] * len(names))
    execute(url, f"INSERT INTO ai_agents ({', '.join(names)}) VALUES ({placeholders})",
            [name, agent_type, *columns.values()])


def max_connections() -> int:
    return int(scalar(ADMIN_URL, "SHOW max_connections"))


# -- subprocesses --------------------------------------------------------------------


def daemon_env(db_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a benchmarked ``agent-runner run``.

    Unlike the test harness's (short poll interval, fast heartbeats), this keeps the
    product's defaults, so a figure describes what an operator gets; a benchmark that
    needs something else says so through ``overrides``. The metrics server listens on
    an ephemeral port so that several daemons never collide.
    """
    env = dict(os.environ)
    for name in list(env):
        # Nothing from the caller's shell may tune the daemon behind our back.
        if name.startswith(("RUNNER_", "ANTHROPIC_")):
            del env[name]
    env.pop("NOTIFY_SOCKET", None)
    env.update({
        "DATABASE_URL": db_url,
        "RUNNER_METRICS_ADDR": "127.0.0.1:0",
        "RUNNER_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


class Subprocess:
    """A child process in its own session, its output kept in a log file.

    ``stop`` signals only this child (by pid), waits, and escalates to SIGKILL.
    """

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_name: str,
                 cwd: Path = REPO) -> None:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = OUT_DIR / log_name
        self._log = self.log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 30.0, signum: int = signal.SIGTERM) -> int | None:
        """``signum``, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        try:
            if self.alive():
                self.proc.send_signal(signum)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait(timeout=10)
            return self.proc.returncode
        finally:
            self._log.close()

    def __enter__(self) -> Subprocess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_daemon(db_url: str, log_name: str, **env: str) -> Subprocess:
    """``agent-runner run`` (as ``python -m runner.cli run``) against ``db_url``, from
    :data:`CHECKOUT` (``-m`` puts the working directory first on ``sys.path``)."""
    return Subprocess([sys.executable, "-m", "runner.cli", "run"],
                      daemon_env(db_url, **env), log_name, cwd=CHECKOUT)


def wait_for_daemon(db_url: str, daemon: Subprocess, timeout: float = 60.0) -> None:
    """Until the daemon has registered itself (its worker is about to fetch)."""
    wait_until(
        lambda: scalar(db_url, "SELECT count(*) FROM runner_daemons WHERE pid = %s",
                       [daemon.pid]) > 0,
        timeout=timeout, what="the daemon to register", process=daemon,
    )


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1,
    process: Subprocess | None = None,
) -> Any:
    """Poll ``predicate`` until truthy. Fails early, with its log, if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and not process.alive():
            raise BenchError(f"process exited ({process.proc.returncode}) while waiting for "
                             f"{what}; log tail:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            tail = f"; log tail:\n{process.log_tail()}" if process is not None else ""
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)


class BenchError(Exception):
    """The benchmark could not produce its figure (not: the figure missed its goal)."""


def run_main(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s code; a :class:`BenchError` becomes a one-paragraph message
    and exit 1 (no RESULT line, so ``bench_all.sh`` reports the benchmark as not run)."""
    try:
        code = main()
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr, flush=True)
        code = 1
    sys.exit(code)


# -- /proc ---------------------------------------------------------------------------


def rss_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of ``pid``, in MB (MiB, as the kernel counts kB)."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0]) / 1024
    return figures


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of stat); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def backend_cpu_seconds(db_url: str) -> float:
    """CPU time of the Postgres backends now connected to ``db_url``'s database.

    Postgres runs on the same two cores as the workers, so the CPU the server spends
    per job is part of the cost of a design: this lets a benchmark attribute it.
    """
    pids = [row[0] for row in execute(
        db_url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()",
    )]
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):  # a backend that just exited
            total += cpu_seconds(pid)
    return total


# -- profiling ------------------------------------------------------------------------


def py_spy_path() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


def start_py_spy(pid: int, out: Path) -> Subprocess:
    spy = py_spy_path()
    assert spy is not None
    return Subprocess([spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                          "--output", str(out), "--nonblocking"],
                         dict(os.environ), out.name + ".log")


def _frame(text: str) -> tuple[str, str]:
    """``"func (path/file.py:12)"`` -> ``("func", "path/file.py")``."""
    name, _, where = text.partition(" (")
    return name, where.rsplit(":", 1)[0].rstrip(")")


def _library(path: str) -> str:
    top = path.split("/")[0]
    if path.startswith("<frozen"):
        return "importlib"
    return top.removesuffix(".py")


def summarise_profile(path: Path) -> list[str]:
    """Where the daemon's samples go, from py-spy's collapsed stacks, two ways:

    * by the innermost runner/agents function on the stack (which step of an attempt
      the time belongs to, whatever library it ends up in);
    * by the library of the innermost frame (self time: psycopg, logging, asyncio ...).
    """
    by_step: collections.Counter[str] = collections.Counter()
    by_library: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit() or not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_frame(text) for text in stack.split(";")]
        # Only frames run by the event loop count as a step: below them every sample
        # passes through cli.cmd_run / asyncio.run.
        callbacks = [i for i, (name, _) in enumerate(frames) if name == "Handle._run"]
        in_loop = frames[callbacks[-1] + 1:] if callbacks else []
        if frames[-1][1].startswith("selectors"):
            step = "(idle: the event loop waits in epoll for Postgres)"
        else:
            step = "(procrastinate's worker loop, asyncio, other)"
        for name, where in reversed(in_loop):
            if where.startswith(("runner/", "agents/")):
                step = f"{name} ({where})"
                break
        by_step[step] += count
        by_library[_library(frames[-1][1])] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples while draining; by innermost runner/agents function:"]
    lines += [f"  {100 * n / total:5.1f}%  {step}" for step, n in by_step.most_common(15)]
    lines.append("by library of the innermost frame (self time):")
    lines += [f"  {100 * n / total:5.1f}%  {lib}" for lib, n in by_library.most_common(10)]
    return lines


# -- statistics and reporting -------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ratio: float, *, higher_is_better: bool) -> str:
    met = ratio >= 1.0 if higher_is_better else ratio <= 1.0
    return "MET" if met else "MISSED"


def print_result(benchmark: str, figures: dict[str, Any]) -> None:
    """The machine-readable last line that ``bench_all.sh`` collects."""
    print("RESULT " + json.dumps({"benchmark": benchmark, **figures}, default=str),
          flush=True)


def machine_description() -> str:
    cpus = os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    server = scalar(ADMIN_URL, "SHOW server_version")
    return f"{cpus} CPU(s) {model}; PostgreSQL {server}; Python {sys.version.split()[0]}"
