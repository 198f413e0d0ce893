#!/usr/bin/env python3
"""Benchmark: loading a 1,000,000-row Companies House BasicCompanyData file.

Goal: at least 100,000 rows/s for the first load into an empty ``companies`` table.
The re-import of the same file (the upsert path: every row found, none changed) is
timed too, as is the generator when it has to make the file.

The file is generated once and reused (``scripts/out/``, git-ignored). Each run
imports into a fresh scratch database on ``AGENT_RUNNER_TEST_ADMIN_URL`` through a
two-connection pool, as the CLI would, and drops it afterwards. Besides wall time it
reports the CPU seconds of this process and of the Postgres backends that served
it: on a shared two-core machine those say what the import costs when the wall clock
is skewed by other load (the load average is printed for the same reason).

Usage: python scripts/bench_import.py [--rows 1000000] [--file F] [--no-reimport]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import bench_common as bench  # sets sys.path up for `agents` and `runner` from a checkout
from psycopg_pool import AsyncConnectionPool

from agents import companies_generator as generate_companies
from agents.companies_import import ImportReport, import_companies

GOAL_ROWS_PER_SECOND = 100_000


async def _timed_import(url: str, path: Path, batch_rows: int) -> tuple[ImportReport, float]:
    """The import's report, and the CPU seconds its Postgres backends spent."""
    async with AsyncConnectionPool(url, min_size=2, max_size=2, open=False) as pool:
        await pool.wait()
        before = bench.backend_cpu_seconds(url)
        report = await import_companies(pool, path, progress=True, batch_rows=batch_rows)
        # The pool's two connections are still open: their backends are still there.
        return report, bench.backend_cpu_seconds(url) - before


def _run(label: str, url: str, path: Path, batch_rows: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    cpu_before = bench.cpu_seconds(os.getpid())
    report, backend_cpu = asyncio.run(_timed_import(url, path, batch_rows))
    python_cpu = bench.cpu_seconds(os.getpid()) - cpu_before
    rate = report.rows_per_second
    print(
        f"{label}: {report.rows_read:,} rows in {report.seconds:.1f} s = {rate:,.0f} rows/s "
        f"({rate / GOAL_ROWS_PER_SECOND:.2f}x the {GOAL_ROWS_PER_SECOND:,} rows/s goal); "
        f"inserted {report.inserted:,}, updated {report.updated:,}, "
        f"unchanged {report.unchanged:,}, rejected {report.rejected:,}; "
        f"bulk load: {report.bulk_load}",
        flush=True,
    )
    peak_mb = bench.rss_mb(os.getpid())["VmHWM"]
    print(
        f"  CPU: Python {python_cpu:.1f} s, Postgres backends {backend_cpu:.1f} s "
        f"(index builds' parallel workers not counted); Python peak RSS {peak_mb:.0f} MB; "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return {
        "rows": report.rows_read,
        "seconds": round(report.seconds, 2),
        "rows_per_second": round(rate),
        "python_cpu_s": round(python_cpu, 1),
        "postgres_cpu_s": round(backend_cpu, 1),
        "python_peak_rss_mb": round(peak_mb),
        "bulk_load": report.bulk_load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--file", type=Path, help="CSV to import (default: generated)")
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--no-reimport", action="store_true")
    args = parser.parse_args()

    print(bench.machine_description(), flush=True)
    figures: dict[str, Any] = {"goal_rows_per_second": GOAL_ROWS_PER_SECOND}
    path = args.file or bench.OUT_DIR / f"companies_{args.rows}_seed{args.seed}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        partial = path.with_suffix(".partial")
        with partial.open("w", encoding="utf-8", newline="", buffering=1 << 20) as out:
            generate_companies.generate(out, args.rows, seed=args.seed)
        partial.rename(path)
        seconds = time.perf_counter() - started
        print(f"generated {args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB) "
              f"in {seconds:.1f} s", flush=True)
        figures["generate_seconds"] = round(seconds, 1)
    else:
        print(f"reusing {path} ({path.stat().st_size / 1e6:.0f} MB)", flush=True)

    with bench.scratch_database("companies") as url:
        first = _run("import", url, path, args.batch_rows)
        figures.update(first)
        figures["ratio_to_goal"] = round(first["rows_per_second"] / GOAL_ROWS_PER_SECOND, 2)
        figures["verdict"] = bench.verdict(figures["ratio_to_goal"], higher_is_better=True)
        if not args.no_reimport:
            again = _run("re-import (upsert, nothing changed)", url, path, args.batch_rows)
            figures.update({f"reimport_{key}": value for key, value in again.items()})
    bench.print_result("companies_import", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
