"""A throw-away PostgreSQL server for fault tests: ours to stop, restart, kill or run
under a fake clock, without touching the server the other tests share.

Started from the installed server package (``pg_config --bindir``, else
``/usr/lib/postgresql/*/bin``), with ``initdb`` into a temporary directory, on a free
port of 127.0.0.1, as the unprivileged ``agent-runner-pg`` account when we are root
(PostgreSQL refuses to run as root), and removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg

SERVER_USER = "agent-runner-pg"


def find_bindir() -> Path | None:
    candidates = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        candidates.append(subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10,
        ).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        path = Path(candidate)
        if candidate and all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return path
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def faketime_library() -> Path | None:
    """libfaketime from Debian's ``faketime`` package, when installed."""
    for pattern in ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


class ThrowawayPostgres:
    def __init__(self, *, env: Mapping[str, str] | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) installed")
        self.bindir = bindir
        self.port = free_port()
        self.extra_env = dict(env or {})
        self.root = Path(tempfile.mkdtemp(prefix="ar-fault-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            self._ensure_account()
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, SERVER_USER, SERVER_USER)

    # -- running the tools ---------------------------------------------------------------

    def _ensure_account(self) -> None:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home",
                 "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True, capture_output=True,
            )

    def _run(self, *args: str, check: bool = True, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", **self.extra_env}
        command = [str(a) for a in args]
        if self._as_root:
            command = ["setpriv", f"--reuid={SERVER_USER}", f"--regid={SERVER_USER}",
                       "--clear-groups", *command]
        return subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    # -- life cycle ----------------------------------------------------------------------

    def init(self) -> ThrowawayPostgres:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -F -c full_page_writes=off "
                   "-c synchronous_commit=off")
        result = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                           str(self.log), "-w", "-t", "60", "-o", options, "start", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{self.server_log()}")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "stop", check=False)

    def restart(self, *, down_for: float = 0.0, mode: str = "fast") -> float:
        """Stop (``mode``), stay down ``down_for`` seconds, start again; returns the
        monotonic time at which the server answered again."""
        self.stop(mode)
        time.sleep(down_for)
        self.start()
        return time.monotonic()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- use -----------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)

    def terminate_backends(self, dbname: str) -> int:
        """``pg_terminate_backend`` every other session of ``dbname``; how many."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchall()
        return sum(1 for (done,) in rows if done)


@contextlib.contextmanager
def throwaway_postgres(*, env: Mapping[str, str] | None = None) -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres(env=env).init()
    try:
        server.start()
        yield server
    finally:
        server.remove()
