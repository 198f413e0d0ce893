"""Load a Companies House "BasicCompanyData" CSV into ``companies``.

The free bulk product is about five million rows; loading it must take minutes, not
hours, on a small machine. So the hot path does no per-row work in Python at all:

* The file is read in blocks of about ``batch_rows`` rows, cut at record boundaries,
  and each block goes byte for byte into ``COPY ... (FORMAT csv)`` into a staging
  table (``agents/store/companies.py``). Postgres parses and type-checks it in C.
* One ``INSERT ... SELECT`` per batch moves it into ``companies``: an upsert on
  ``company_number`` that rewrites only the Companies House columns, and skips rows
  that did not change. Each batch is its own short transaction.
* Two connections work at once: one COPYs batch k+1 while the other writes batch k,
  so both of Postgres' cores are busy. Writes still land in file order.
* The first load into an empty table drops the secondary indexes and the foreign key
  first and rebuilds them at the end (see ``store.defer_secondary_ddl``): maintaining
  them row by row costs several times more than building them once.

Validation is exact all the same. When Postgres refuses a batch (a bad date, a wrong
column count, a missing company number, a number repeated in the batch, bad UTF-8),
the batch is re-read in Python, row by row: every bad row is reported as
(line number, reason) and the good rows are loaded. Should Postgres still refuse
something Python let through, the batch is halved until the culprit row is found.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from tqdm import tqdm

from agents.store import companies as store

__all__ = [
    "CSV_COLUMNS",
    "CompaniesFileError",
    "ImportReport",
    "Reject",
    "import_companies",
]

# The header of BasicCompanyData, each name stripped: the real files put a space in
# front of some names (" CompanyNumber", " RegAddress.AddressLine2", ...).
CSV_COLUMNS: tuple[str, ...] = (
    "CompanyName", "CompanyNumber", "RegAddress.CareOf", "RegAddress.POBox",
    "RegAddress.AddressLine1", "RegAddress.AddressLine2", "RegAddress.PostTown",
    "RegAddress.County", "RegAddress.Country", "RegAddress.PostCode", "CompanyCategory",
    "CompanyStatus", "CountryOfOrigin", "DissolutionDate", "IncorporationDate",
    "Accounts.AccountRefDay", "Accounts.AccountRefMonth", "Accounts.NextDueDate",
    "Accounts.LastMadeUpDate", "Accounts.AccountCategory", "Returns.NextDueDate",
    "Returns.LastMadeUpDate", "Mortgages.NumMortCharges", "Mortgages.NumMortOutstanding",
    "Mortgages.NumMortPartSatisfied", "Mortgages.NumMortSatisfied", "SICCode.SicText_1",
    "SICCode.SicText_2", "SICCode.SicText_3", "SICCode.SicText_4",
    "LimitedPartnerships.NumGenPartners", "LimitedPartnerships.NumLimPartners", "URI",
    *(name for i in range(1, 11)
      for name in (f"PreviousName_{i}.CONDATE", f"PreviousName_{i}.CompanyName")),
    "ConfStmtNextDueDate", "ConfStmtLastMadeUpDate",
)
assert len(CSV_COLUMNS) == len(store.STAGING_COLUMNS)

_DATE_FIELDS = tuple(i for i, name in enumerate(CSV_COLUMNS)
                     if name.endswith(("Date", ".CONDATE")))
_INT_FIELDS = tuple(i for i, name in enumerate(CSV_COLUMNS)
                    if name.startswith(("Accounts.AccountRef", "Mortgages.", "LimitedPartner")))
_COMPANY_NUMBER = re.compile(r"[A-Z0-9]{2}[0-9]{6}")
_INT4_MAX = 2**31 - 1

# Postgres refused the data (as opposed to: the connection or the server failed).
# Any of these sends the batch through the careful path.
_DATA_PROBLEMS = (
    psycopg.errors.DataError,  # bad date or number, bad CSV shape, bad UTF-8
    psycopg.errors.IntegrityError,  # no name, bad company number, repeated number
    psycopg.errors.CardinalityViolation,  # a number repeated within one upsert
    psycopg.errors.DeadlockDetected,  # numbers repeated across concurrent batches
    psycopg.errors.ProgramLimitExceeded,  # a value too big for an index entry
)

_BYTES_PER_ROW = 500  # BasicCompanyData rows average 400-500 bytes
_BULK_MIN_BYTES = 32 * 1024 * 1024  # below this, rebuilding indexes is not worth it


class CompaniesFileError(Exception):
    """The file is not a BasicCompanyData CSV. Raised before anything is written."""


@dataclass(frozen=True, slots=True)
class Reject:
    line: int  # physical line in the file; the header is line 1
    reason: str


@dataclass(slots=True)
class ImportReport:
    path: str
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0  # already in the table with the same Companies House data
    rejected: int = 0
    seconds: float = 0.0
    bulk_load: bool = False  # indexes were rebuilt after loading an empty table
    rejects: list[Reject] = field(default_factory=list)  # the first few, in file order

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for ``agent-runner import-companies --json``."""
        out = asdict(self)
        out["rows_per_second"] = round(self.rows_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


async def import_companies(
    pool_or_conninfo: AsyncConnectionPool[Any] | str,
    path: str | os.PathLike[str],
    *,
    progress: bool = False,
    batch_rows: int = 50_000,
    max_rejects: int = 100,
    connections: int = 2,
    bulk: bool | None = None,
) -> ImportReport:
    """Load (or reload) a BasicCompanyData CSV into ``companies``.

    Bad rows do not stop the import: they are counted and the first ``max_rejects``
    are returned with their line numbers and reasons. A file whose header is not
    BasicCompanyData's raises :class:`CompaniesFileError` and writes nothing.
    ``path`` may also be the zip Companies House publishes (one CSV inside).
    ``progress`` shows a tqdm bar (bytes) on stderr. ``bulk`` forces (True) or
    forbids (False) the empty-table fast path; by default it is used when the table
    is empty and the file is large. Imports into one database run one at a time.
    """
    if batch_rows < 1 or connections < 1:
        raise ValueError("batch_rows and connections must be at least 1")
    started = time.perf_counter()
    path = Path(path)
    report = ImportReport(path=str(path))
    with ExitStack() as files:
        file, size = await asyncio.to_thread(_open_source, path, files)
        eol = await asyncio.to_thread(_read_header, file)
        async with AsyncExitStack() as stack:
            if isinstance(pool_or_conninfo, str):
                opened = [await stack.enter_async_context(_own_connection(pool_or_conninfo))
                          for _ in range(connections)]
            else:
                workers = max(1, min(connections, pool_or_conninfo.max_size))
                opened = [await stack.enter_async_context(pool_or_conninfo.connection())
                          for _ in range(workers)]
            bar = stack.enter_context(tqdm(
                total=size, initial=file.tell(), unit="B", unit_scale=True,
                unit_divisor=1024, desc="companies", disable=not progress))
            loader = _Loader(opened, report, bar, max_rejects)
            await loader.run(file, eol, batch_rows, bulk, size)
    report.rejects.sort(key=lambda reject: reject.line)
    report.unchanged = report.rows_read - report.rejected - report.inserted - report.updated
    report.seconds = time.perf_counter() - started
    return report


def _open_source(path: Path, files: ExitStack) -> tuple[IO[bytes], int]:
    """The CSV, and its size in bytes. Companies House ships the file zipped: a zip
    holding one CSV is read as it is, decompressed on the fly."""
    if not zipfile.is_zipfile(path):
        file = files.enter_context(path.open("rb"))
        return file, os.fstat(file.fileno()).st_size
    archive = files.enter_context(zipfile.ZipFile(path))
    members = [info for info in archive.infolist() if info.filename.lower().endswith(".csv")]
    if len(members) != 1:
        raise CompaniesFileError(
            f"{path} holds {len(members)} CSV files; expected one BasicCompanyData CSV")
    return files.enter_context(archive.open(members[0])), members[0].file_size


@asynccontextmanager
async def _own_connection(conninfo: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    async with conn:
        yield conn


def _read_header(file: IO[bytes]) -> bytes:
    """Check the header line; return the file's line ending."""
    first = file.readline(64 * 1024)
    if not first:
        raise CompaniesFileError(f"{getattr(file, 'name', 'the file')} is empty")
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CompaniesFileError(f"the header line is not UTF-8 text: {exc}") from None
    names = [name.strip() for name in next(csv.reader([text]), [])]
    if names != list(CSV_COLUMNS):
        raise CompaniesFileError(_describe_header_mismatch(names))
    return b"\r\n" if first.endswith(b"\r\n") else b"\n"


def _describe_header_mismatch(names: list[str]) -> str:
    prefix = "not a Companies House BasicCompanyData CSV: "
    for position, (found, expected) in enumerate(zip(names, CSV_COLUMNS, strict=False)):
        if found != expected:
            return (f"{prefix}header column {position + 1} is {found!r}, "
                    f"expected {expected!r}")
    return (f"{prefix}the header has {len(names)} columns, "
            f"expected {len(CSV_COLUMNS)} (CompanyName, CompanyNumber, ...)")


# --- reading the file in record-aligned blocks -------------------------------------


def _record_boundary(data: bytes) -> int:
    """Where to cut ``data`` so that the first part ends with a whole record: after
    the last newline that is outside quotes (a CSV field may hold a newline). 0 when
    there is no such newline yet."""
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        return 0
    # With doubled quotes for a literal one, an odd number of quote characters before
    # a newline means that newline sits inside a quoted field.
    quotes = data.count(b'"', 0, cut)
    candidate = cut
    while quotes % 2:
        previous = data.rfind(b"\n", 0, candidate - 1) + 1
        if previous == 0:
            return cut  # unbalanced quotes: malformed, let the careful path sort it out
        quotes -= data.count(b'"', previous, candidate)
        candidate = previous
    return candidate


def _blocks(file: IO[bytes], eol: bytes, block_bytes: int) -> Iterator[bytes]:
    carry = b""
    while True:
        chunk = file.read(block_bytes)
        if not chunk:
            # The last line may lack its line ending, and blank lines may trail.
            tail = carry.rstrip(b"\r\n")
            if tail:
                yield tail + eol
            return
        data = carry + chunk if carry else chunk
        cut = _record_boundary(data)
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        yield data[:cut]


@dataclass(slots=True)
class _Batch:
    index: int
    first_line: int
    data: bytes


# --- the careful path: Python reads the batch row by row ---------------------------


@dataclass(slots=True)
class _Parsed:
    rows: list[tuple[int, str]]  # (line, the row as one CSV line), good rows only
    rejects: list[Reject]
    records: int


def _valid_date(value: str) -> bool:
    if len(value) != 10 or value[2] != "/" or value[5] != "/":
        return False
    day, month, year = value[:2], value[3:5], value[6:]
    if not (day + month + year).isascii() or not (day + month + year).isdigit():
        return False
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def _row_problem(record: list[str]) -> str | None:
    """Why the row cannot be loaded, or None. Normalises the company number and
    number fields in place (the register's numbers are upper case, 8 characters)."""
    if len(record) != len(CSV_COLUMNS):
        return f"{len(record)} fields, expected {len(CSV_COLUMNS)}"
    number = record[1].strip().upper()
    if not number:
        return "no company number"
    if number.isascii() and number.isdigit() and len(number) < 8:
        number = number.zfill(8)  # a spreadsheet ate the leading zeros
    if not _COMPANY_NUMBER.fullmatch(number):
        return (f"company number {record[1]!r} is not 8 letters and digits "
                "(like 01234567 or SC123456)")
    record[1] = number
    if not record[0].strip():
        return "no company name"
    for i in _DATE_FIELDS:
        value = record[i]
        if value and not _valid_date(value):
            return f"{CSV_COLUMNS[i]} {value!r} is not a DD/MM/YYYY date"
    for i in _INT_FIELDS:
        value = record[i].strip()
        if value and not (value.isascii() and value.isdigit() and int(value) <= _INT4_MAX):
            return f"{CSV_COLUMNS[i]} {record[i]!r} is not a whole number"
        record[i] = value
    for value in record:
        if "\x00" in value:
            return "a field contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "not valid UTF-8"
    return None


def _parse_batch(data: bytes, first_line: int) -> _Parsed:
    # surrogateescape keeps going past bad bytes; _row_problem then rejects those rows.
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    rows: list[tuple[int, str] | None] = []
    where: dict[str, int] = {}  # company number -> its index in rows
    rejects: list[Reject] = []
    records = 0
    consumed = 0
    while True:
        line = first_line + consumed
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            consumed = reader.line_num
            records += 1
            rejects.append(Reject(line, f"unreadable CSV: {exc}"))
            continue
        consumed = reader.line_num
        if not record:
            continue  # a blank line
        records += 1
        problem = _row_problem(record)
        if problem:
            rejects.append(Reject(line, problem))
            continue
        number = record[1]
        if number in where:  # the last occurrence wins, as a re-import would have it
            earlier = rows[where[number]]
            assert earlier is not None
            rejects.append(Reject(earlier[0], f"company number {number} appears again at "
                                              f"line {line}, which is loaded instead"))
            rows[where[number]] = None
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(record)
        where[number] = len(rows)
        rows.append((line, buffer.getvalue()))
    rejects.sort(key=lambda reject: reject.line)
    return _Parsed([row for row in rows if row is not None], rejects, records)


# --- the loader ------------------------------------------------------------------------


class _Turns:
    """Lets batches write in file order, so that when a file repeats a company number
    its last row wins, whichever connection carried it."""

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._next = 0
        self._changed = asyncio.Condition()

    async def wait(self, index: int) -> None:
        if self._ordered:
            async with self._changed:
                await self._changed.wait_for(lambda: self._next >= index)

    async def done(self, index: int) -> None:
        async with self._changed:
            self._next = max(self._next, index + 1)
            self._changed.notify_all()


class _Loader:
    def __init__(self, conns: list[psycopg.AsyncConnection[Any]], report: ImportReport,
                 bar: tqdm[Any], max_rejects: int) -> None:
        self._conns = conns
        self._report = report
        self._bar = bar
        self._max_rejects = max_rejects
        self._bulk = False
        self._turns = _Turns(ordered=True)

    async def run(self, file: IO[bytes], eol: bytes, batch_rows: int, bulk: bool | None,
                  size: int) -> None:
        control = self._conns[0]
        async with control.transaction():
            await store.lock_imports(control)
        try:
            # A bulk load that died earlier left its indexes on record: rebuild first.
            await self._restore_deferred()
            if bulk is None:
                async with control.transaction():
                    bulk = size >= _BULK_MIN_BYTES and await store.is_empty(control)
            if bulk:
                self._bulk = bool(await store.defer_secondary_ddl(control))
            self._report.bulk_load = self._bulk
            # A bulk load has no existing rows to update: batches need not wait on
            # each other (a repeated number is then settled by the careful path).
            self._turns = _Turns(ordered=not self._bulk)
            try:
                await self._load(file, eol, batch_rows)
            finally:
                if self._bulk:
                    await self._restore_deferred()
        finally:
            async with control.transaction():
                await store.unlock_imports(control)

    async def _restore_deferred(self) -> None:
        pending = await store.deferred_ddl(self._conns[0])

        async def rebuild(conn: psycopg.AsyncConnection[Any]) -> None:
            while pending:
                name, ddl = pending.pop(0)
                await store.restore_ddl(conn, name, ddl)

        # One build per connection at a time: they overlap (GIN builds are not parallel).
        async with asyncio.TaskGroup() as group:
            for conn in self._conns:
                group.create_task(rebuild(conn))

    async def _load(self, file: IO[bytes], eol: bytes, batch_rows: int) -> None:
        # One batch read ahead is enough to keep the connections fed; each batch held
        # costs batch_rows * ~500 bytes of memory.
        queue: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._produce(file, eol, batch_rows, queue))
                for conn in self._conns:
                    group.create_task(self._work(conn, queue))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _produce(self, file: IO[bytes], eol: bytes, batch_rows: int,
                       queue: asyncio.Queue[_Batch | None]) -> None:
        blocks = _blocks(file, eol, batch_rows * _BYTES_PER_ROW)
        line = 2
        index = 0
        while (data := await asyncio.to_thread(next, blocks, None)) is not None:
            await queue.put(_Batch(index, line, data))
            line += data.count(b"\n")
            index += 1
        for _ in self._conns:
            await queue.put(None)

    async def _work(self, conn: psycopg.AsyncConnection[Any],
                    queue: asyncio.Queue[_Batch | None]) -> None:
        while (batch := await queue.get()) is not None:
            try:
                await self._load_batch(conn, batch)
            finally:
                await self._turns.done(batch.index)
            self._bar.update(len(batch.data))

    async def _load_batch(self, conn: psycopg.AsyncConnection[Any], batch: _Batch) -> None:
        try:
            async with conn.transaction():
                await store.create_staging(conn)
                staged = await self._copy(conn, batch.data)
                await self._turns.wait(batch.index)
                if self._bulk:
                    inserted, updated = await store.insert_staged(conn), 0
                else:
                    inserted, updated = await store.upsert_staged(conn)
        except _DATA_PROBLEMS:
            await self._turns.wait(batch.index)
            await self._load_carefully(conn, batch)
            return
        self._count(staged, inserted, updated)

    async def _copy(self, conn: psycopg.AsyncConnection[Any], data: bytes) -> int:
        async with conn.cursor() as cursor:
            async with cursor.copy(store.COPY_STAGING) as copy:
                await copy.write(data)
            return cursor.rowcount

    async def _load_carefully(self, conn: psycopg.AsyncConnection[Any],
                              batch: _Batch) -> None:
        parsed = await asyncio.to_thread(_parse_batch, batch.data, batch.first_line)
        self._report.rows_read += parsed.records - len(parsed.rows)
        for reject in parsed.rejects:
            self._reject(reject)
        await self._load_rows(conn, parsed.rows)

    async def _load_rows(self, conn: psycopg.AsyncConnection[Any],
                         rows: list[tuple[int, str]]) -> None:
        """Load rows Python found good; if Postgres still refuses, halve until the
        refused row is alone, and reject it with Postgres' reason."""
        if not rows:
            return
        try:
            async with conn.transaction():
                await store.create_staging(conn)
                staged = await self._copy(conn, "".join(text for _, text in rows).encode())
                inserted, updated = await store.upsert_staged(conn)
        except _DATA_PROBLEMS as exc:
            if len(rows) == 1:
                self._report.rows_read += 1
                message = exc.diag.message_primary or str(exc)
                self._reject(Reject(rows[0][0], f"refused by the database: {message}"))
                return
            middle = len(rows) // 2
            await self._load_rows(conn, rows[:middle])
            await self._load_rows(conn, rows[middle:])
            return
        self._count(staged, inserted, updated)

    def _count(self, staged: int, inserted: int, updated: int) -> None:
        self._report.rows_read += staged
        self._report.inserted += inserted
        self._report.updated += updated

    def _reject(self, reject: Reject) -> None:
        self._report.rejected += 1
        if len(self._report.rejects) < self._max_rejects:
            self._report.rejects.append(reject)
