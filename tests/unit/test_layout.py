"""The tree keeps its shape: SQL lives in runner/store/ (and the migrations), and the
migrations on disk are the ones a database has applied."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import runner

RUNNER = Path(runner.__file__).resolve().parent
# What opens an SQL statement in a string literal (keywords in capitals, as this code
# base writes SQL; prose such as a help text's "create a stream" is not SQL).
_SQL = re.compile(
    r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+\w+\s+AS|LISTEN|NOTIFY|"
    r"CREATE\s|ALTER\s|DROP\s|TRUNCATE|COPY\s|SET\s+\w+\s*=|BEGIN|COMMIT)\b",
)
_ALLOWED = {RUNNER / "migrate.py"}


def _engine_modules() -> list[Path]:
    return sorted(
        path for path in RUNNER.rglob("*.py")
        if (RUNNER / "store") not in path.parents and path not in _ALLOWED
    )


def _sql_in(path: Path) -> list[str]:
    """String literals that start an SQL statement, and calls that send one."""
    found = []
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and _SQL.match(node.value):
            found.append(f"{path.name}:{node.lineno}: {node.value.strip()[:40]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in {"execute", "executemany", "copy"}:
            found.append(f"{path.name}:{node.lineno}: .{node.func.attr}(...)")
    return found


def test_the_engine_sends_sql_only_from_runner_store_and_migrate() -> None:
    modules = _engine_modules()
    assert RUNNER / "daemon.py" in modules  # the scan sees the engine
    offenders = [hit for path in modules for hit in _sql_in(path)]
    assert offenders == []


def test_the_scan_finds_sql(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('async def f(conn):\n    await conn.execute("SELECT 1")\n'
                      'Q = """\n  DELETE FROM x WHERE y"""\n'
                      'HELP = "create a stream; prints its id"\n')
    assert len(_sql_in(sample)) == 3
