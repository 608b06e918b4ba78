"""SQLite implementation of ``TicketStore``: WAL mode, group commit, fsync before the reply.

Writes are grouped: while one group's COMMIT (its fsync) runs, the writes that arrive
queue up, and the next group takes them all — one fsync for the whole group. With several
writers at once, a group may also wait a few milliseconds for more of them
(``node.group_pacing``). The callers' futures are resolved only once their group's COMMIT
has returned.

A group's statements run on the event loop's thread; only the COMMIT runs on the
committer thread, where SQLite releases the GIL for the fsync. Running the Python work of
the writes on a second thread made it fight the loop for the GIL (every statement gives
the GIL up and must wait to get it back), which cost more than the work itself. The one
write connection is touched by one thread at a time: the loop until the group is ready,
then the committer until COMMIT returns; no new group starts before that.

Reads use their own connection and see committed data only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from federation.hlc import HybridClock
from federation.merge import ReplicatedTicket, apply_in_place, node_digest
from federation.operations import TICKET_CREATE, Operation, canonical_json
from node.clock import Clock
from node.committer import Committer
from node.errors import InvalidArgument, NotFound, StorageError, SundeskError
from node.group_pacing import DEFAULT_DELAY_S, GroupPacer
from node.store import Build, Change, Page, TicketFilter
from node.tickets import OPEN_STATES, State, TicketView

log = logging.getLogger("sundesk.store")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ops (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc INTEGER NOT NULL,
    ticket TEXT NOT NULL,
    kind TEXT NOT NULL,
    fields BLOB NOT NULL,
    trace TEXT NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vv (origin TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (
    code TEXT PRIMARY KEY,
    created INTEGER NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    customer TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BLOB NOT NULL,
    tier TEXT NOT NULL DEFAULT '',
    assignee TEXT NOT NULL DEFAULT '',
    second_engineer TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tickets_order ON tickets (created_at, code);
CREATE INDEX IF NOT EXISTS tickets_queue ON tickets (queue, state);
CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, code TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    key TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BLOB NOT NULL
);
"""

# Records are the replicated entities that are not tickets (handoffs, notes). They travel
# in the same operation log and merge by the same rules; their keys never look like codes.
RecordBuild = Callable[[ReplicatedTicket | None, datetime], tuple[str, dict[str, Any]] | None]

MAX_GROUP = 512
_INSERT_OP = "INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_TICKET = "INSERT OR REPLACE INTO tickets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# Columns added after the first release, each copied from the ticket value of its name.
_ADDED_COLUMNS = ("tier", "assignee", "second_engineer")


def _filter_terms(flt: TicketFilter) -> tuple[list[str], list[Any]]:
    """The WHERE terms (joined by AND) and their arguments that select ``flt``'s tickets."""
    where = ["created=1"]
    args: list[Any] = []
    if flt.states:
        where.append(f"state IN ({','.join('?' * len(flt.states))})")
        args.extend(s.value for s in flt.states)
    for column, value in (("queue", flt.queue), ("customer", flt.customer)):
        if value:
            where.append(f"{column}=?")
            args.append(value)
    if flt.kind is not None:
        where.append("kind=?")
        args.append(flt.kind.value)
    if flt.tiered:
        where.append("tier != ''")
    return where, args


class _WriteFailed(Exception):
    """A write failed after its rules passed: the group must be redone job by job."""


@dataclass
class _Job:
    future: asyncio.Future[Any]
    code: str | None = None
    build: Build | None = None
    trace: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    remote: Sequence[Operation] = ()
    record: RecordBuild | None = None
    may_create: bool = False
    answer: Callable[[TicketView], Any] | None = None


# Tickets by (state, queue, tier), the gauge global ops watch.
CountKey = tuple[str, str, str]


@dataclass
class _Result:
    value: Any = None
    error: BaseException | None = None
    changes: list[Change] = field(default_factory=list)
    counts: list[tuple[CountKey | None, CountKey | None]] = field(default_factory=list)


class _Deferred:
    """The rows of a group's new tickets, written with one ``executemany`` per table:
    binding and stepping stay per row, the rest of a statement's cost is paid once.

    Only a job that reads nothing back (a new ticket without a request id) is deferred;
    the rows are written before any other job runs, so every read sees the group's
    earlier writes. A failure here fails the group, which is then redone job by job.
    """

    def __init__(self) -> None:
        self.on = False
        self.ops: list[tuple[Any, ...]] = []
        self.tickets: list[tuple[Any, ...]] = []

    def reset(self) -> None:
        self.on = False
        self.ops.clear()
        self.tickets.clear()

    def flush(self, conn: sqlite3.Connection) -> None:
        try:
            if self.ops:
                conn.executemany(_INSERT_OP, self.ops)
            if self.tickets:
                conn.executemany(_UPSERT_TICKET, self.tickets)
        except sqlite3.Error as exc:
            raise _WriteFailed(str(exc)) from exc
        finally:
            self.ops.clear()
            self.tickets.clear()


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating) the database, with the one clear error per way it can fail."""
    data_dir = path.parent
    if data_dir.exists() and not data_dir.is_dir():
        raise StorageError(
            f"data dir {data_dir} is not a directory; give a directory with --data-dir"
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn
    except PermissionError as denied:
        raise StorageError(f"data dir {data_dir} is not usable: {denied.strerror}") from denied
    except sqlite3.DatabaseError as exc:
        raise StorageError(
            f"{path} is not a usable Sundesk database ({exc}); move it away or choose another "
            "--data-dir"
        ) from exc


class SqliteTicketStore:
    def __init__(
        self,
        data_dir: str | Path,
        region: str,
        region_code: str,
        clock: Clock,
        max_skew_seconds: float = 60.0,
        on_skew: Callable[[int, int], None] | None = None,
        on_commit: Callable[[int, float], None] | None = None,
        on_commit_spans: Callable[[list[Mapping[str, str]], int, int, int], None] | None = None,
        sign: Callable[[Operation], Operation] | None = None,
        admit_remote: Callable[[Sequence[Operation]], list[Operation]] | None = None,
        group_delay_s: float = DEFAULT_DELAY_S,
    ) -> None:
        self.region = region
        self.region_code = region_code
        self.path = Path(data_dir) / "sundesk.db"
        self._clock = clock
        self._on_commit = on_commit
        self._on_commit_spans = on_commit_spans
        # Trust (node/trust.py): sign what we originate; drop remote ops that fail checks.
        # Local operations go into the group unsigned; the committer signs them (below).
        self._sign = sign
        self._unsigned: list[Operation] = []
        self._admit_remote = admit_remote
        self._wconn = open_database(self.path)
        try:
            self._wconn.executescript(SCHEMA)
            self._add_columns()
            self._check_region()
            self._rconn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            self._wconn.close()
            raise StorageError(
                f"{self.path} is not a usable Sundesk database ({exc}); move it away or choose "
                "another --data-dir"
            ) from exc
        self._vv: dict[str, int] = dict(self._wconn.execute("SELECT origin, seq FROM vv"))
        self._committed_vv = dict(self._vv)  # what readers may see: durable only
        self._ticket_seq = self._load_ticket_seq()
        self._counts = self._load_counts()
        self._job_counts: list[tuple[CountKey | None, CountKey | None]] = []
        # Start the HLC above every stamp already logged: a wall clock that went back while
        # the node was down must not reorder this origin's operations.
        (last_hlc,) = self._wconn.execute("SELECT coalesce(max(hlc), 0) FROM ops").fetchone()
        self.hlc = HybridClock(clock, max_skew_seconds, on_skew, start=int(last_hlc))
        self._listeners: list[Callable[[list[Change]], None]] = []
        self.want_views = False
        self._closed = False
        self._pending: list[_Job] = []  # waiting for the next group
        self._busy = False  # a group is due, running or committing
        self._pacer = GroupPacer(group_delay_s, MAX_GROUP)
        self._timer: asyncio.TimerHandle | None = None  # a group due when the delay ends
        self._urgent = False  # a waiting job must not wait for the pacer
        self._idle = asyncio.Event()
        self._idle.set()
        self._dirty_vv: set[str] = set()
        self._deferred = _Deferred()
        self._committer = Committer(self._wconn, f"store-commit-{region}")

    # ----- setup -------------------------------------------------------------------------

    def _add_columns(self) -> None:
        """Databases made before a column of ``_ADDED_COLUMNS`` get it, filled from bodies;
        then the partial indexes of the owner's scans are ensured."""
        present = {row[1] for row in self._wconn.execute("PRAGMA table_info(tickets)")}
        missing = [c for c in _ADDED_COLUMNS if c not in present]
        if missing:
            self._fill_columns(missing)
        # Partial: walk-in tickets are most of a busy desk and never in the SLA scan's
        # index; without it the planner walks ``tickets_order`` over every ticket (20 ms
        # per queue at 30,000). Engineers' load counts assigned tickets only.
        self._wconn.executescript(
            "CREATE INDEX IF NOT EXISTS tickets_tiered ON tickets (queue, state) "
            "WHERE tier != '';"
            "CREATE INDEX IF NOT EXISTS tickets_assignee ON tickets (assignee, state) "
            "WHERE assignee != '';"
            "CREATE INDEX IF NOT EXISTS tickets_second ON tickets (second_engineer, state) "
            "WHERE second_engineer != '';"
        )

    def _fill_columns(self, columns: list[str]) -> None:
        conn = self._wconn
        conn.execute("BEGIN IMMEDIATE")
        for column in columns:
            conn.execute(f"ALTER TABLE tickets ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
        sets = ", ".join(f"{c}=?" for c in columns)
        for code, body in conn.execute("SELECT code, body FROM tickets").fetchall():
            values = ReplicatedTicket.from_json(orjson.loads(body)).values
            found = [values.get(c) or "" for c in columns]
            if any(found):
                conn.execute(f"UPDATE tickets SET {sets} WHERE code=?", (*found, code))
        conn.execute("COMMIT")

    def _check_region(self) -> None:
        row = self._wconn.execute("SELECT value FROM meta WHERE key='region'").fetchone()
        if row is None:
            self._wconn.execute("INSERT INTO meta VALUES ('region', ?)", (self.region,))
        elif row[0] != self.region:
            raise StorageError(
                f"{self.path} holds region {row[0]!r}, not {self.region!r}; give each region "
                "its own --data-dir"
            )

    def _load_ticket_seq(self) -> int:
        prefix = f"{self.region_code}-"
        row = self._wconn.execute(
            "SELECT max(code) FROM tickets WHERE code >= ? AND code < ?",
            (prefix, prefix[:-1] + "."),
        ).fetchone()
        return int(row[0][len(prefix) :]) if row and row[0] else 0

    def _load_counts(self) -> dict[CountKey, int]:
        counts: dict[CountKey, int] = {}
        for state, q, tier in self._wconn.execute(
            "SELECT state, queue, json_extract(body, '$.values.tier') FROM tickets WHERE created=1"
        ):
            key = (state, q, tier or "none")
            counts[key] = counts.get(key, 0) + 1
        return counts

    def add_listener(self, listener: Callable[[list[Change]], None]) -> None:
        """Called on the event loop after every durable commit, with what it changed."""
        self._listeners.append(listener)

    # ----- writes ------------------------------------------------------------------------

    async def write(
        self,
        code: str | None,
        build: Build,
        trace_context: Mapping[str, str] | None = None,
        request_id: str = "",
        may_create: bool = False,
    ) -> tuple[TicketView, Operation | None]:
        """``may_create`` with a ``code``: the code is the caller's (derived, not allocated)
        and ``build`` sees None when no ticket has it yet, so two regions creating the same
        code at once write one ticket that merges (call-home alarms)."""
        result: tuple[TicketView, Operation | None] = await self._enqueue(
            code=code,
            build=build,
            trace=dict(trace_context or {}),
            request_id=request_id,
            may_create=may_create,
        )
        return result

    async def write_answered(
        self,
        code: str | None,
        build: Build,
        answer: Callable[[TicketView], T],
        trace_context: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> tuple[TicketView, T]:
        """``write``, returning ``answer(view)`` beside the view instead of the operation.

        The answers of a commit group are made together as the group is delivered, one
        after the other, rather than each by its caller when it resumes: between two
        callers, grpc sends a reply and reads a request, and code run in between starts
        with cold caches. A node's reply (``node.ticket_wire``, with its replication
        status) cost the loop about 13 µs a call made by each caller and about 8 µs made
        here, against a node answering with a cached reply (the ticket alone: 1.9 µs in a
        warm loop). ``answer`` runs outside the caller's context (no current span); if it
        raises, that caller gets the error (the write itself is committed)."""
        result: tuple[TicketView, T] = await self._enqueue(
            code=code,
            build=build,
            trace=dict(trace_context or {}),
            request_id=request_id,
            answer=answer,
        )
        return result

    async def write_record(
        self, key: str, build: RecordBuild, trace_context: Mapping[str, str] | None = None
    ) -> ReplicatedTicket | None:
        """Like ``write`` for a record; ``build`` may return None to write nothing. Returns
        the record as it is after the call (None if it still does not exist)."""
        result: ReplicatedTicket | None = await self._enqueue(
            code=key, record=build, trace=dict(trace_context or {})
        )
        return result

    async def apply_remote(self, ops: Sequence[Operation]) -> list[Operation]:
        kept = list(ops) if self._admit_remote is None else self._admit_remote(ops)
        if not kept:
            return []
        applied: list[Operation] = await self._enqueue(remote=kept)
        return applied

    def _enqueue(self, **kw: Any) -> asyncio.Future[Any]:
        """The job's future, for the caller to await: not a coroutine of its own, which
        would be one more frame to enter and resume on every write."""
        if self._closed:
            raise StorageError("the store is closed")
        loop = asyncio.get_running_loop()
        job = _Job(future=loop.create_future(), **kw)
        self._pending.append(job)
        if job.build is None:
            # Replicated batches and records never wait for company: replication lag is
            # measured from the origin's commit, and handoffs are few.
            self._urgent = True
        if not self._busy:
            self._busy = True
            self._idle.clear()
            self._schedule_group(loop)
        elif self._timer is not None and (self._urgent or self._pacer.ready(len(self._pending))):
            self._timer.cancel()
            self._timer = None
            loop.call_soon(self._start_group)
        return job.future

    def _schedule_group(self, loop: asyncio.AbstractEventLoop) -> None:
        """The store is free and writes wait: start a group on the next turn of the loop
        (writes arriving meanwhile join it), or when the pacer's delay ends."""
        if self._urgent or self._pacer.ready(len(self._pending)):
            loop.call_soon(self._start_group)
        else:
            self._timer = loop.call_later(self._pacer.delay_s, self._start_group)

    def _start_group(self) -> None:
        self._timer = None
        jobs = self._pending[:MAX_GROUP]
        del self._pending[:MAX_GROUP]
        self._pacer.started(len(jobs))
        self._urgent = any(job.build is None for job in self._pending)
        started = time.perf_counter()
        started_ns = time.time_ns()
        saved = (dict(self._vv), self._ticket_seq)
        try:
            results, ready = self._run_group(jobs)
        except Exception as exc:  # a bug: fail this group, keep the store usable
            log.exception("write group failed")
            if self._wconn.in_transaction:
                self._wconn.execute("ROLLBACK")
            self._vv, self._ticket_seq = saved
            results, ready = [_Result(error=exc) for _ in jobs], False
        if ready:
            unsigned, self._unsigned = self._unsigned, []
            self._committer.commit(
                jobs[0].future.get_loop(),
                partial(self._committed, jobs, results, saved, started, started_ns),
                unsigned,
                self._sign,
            )
        else:  # the transaction failed before COMMIT and was rolled back
            self._finish(jobs, results, started, started_ns)

    def _run_group(self, jobs: list[_Job], savepoints: bool = False) -> tuple[list[_Result], bool]:
        """Run a group of jobs in one transaction and leave it open for the committer.

        Returns one result per job and whether the transaction is ready to commit (False:
        it failed and was rolled back, and every result is that failure).

        Rules reject bad requests before anything is written, so the fast path needs no
        savepoints. If a write itself fails, the whole group is rolled back and run again
        with a savepoint per job, so that only the failing job fails.
        """
        conn = self._wconn
        results: list[_Result] = []
        saved = (dict(self._vv), self._ticket_seq)
        self._dirty_vv = set()
        self._unsigned = []
        deferred = self._deferred
        deferred.reset()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                if savepoints:
                    conn.execute("SAVEPOINT job")
                before = (dict(self._vv), self._ticket_seq)
                mark = len(self._unsigned)  # a failed job's seq is reused: drop its ops
                self._job_counts = []
                deferred.on = (
                    not savepoints
                    and job.code is None
                    and job.build is not None
                    and not job.request_id
                )
                if not deferred.on:
                    deferred.flush(conn)
                try:
                    res = self._run_job(job)
                    res.counts = self._job_counts
                    if savepoints:
                        conn.execute("RELEASE job")
                # Each clause's exception has its own name: compiled (``make native``), a
                # name keeps the type of its first clause.
                except _WriteFailed as failed:
                    if not savepoints:
                        raise
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    self._vv, self._ticket_seq = before
                    del self._unsigned[mark:]
                    res = _Result(error=StorageError(f"could not write to {self.path}: {failed}"))
                except Exception as refused:
                    if savepoints:
                        conn.execute("RELEASE job")
                    self._vv, self._ticket_seq = before
                    del self._unsigned[mark:]
                    res = _Result(error=refused)
                deferred.on = False
                results.append(res)
            deferred.flush(conn)
            for origin in self._dirty_vv:
                conn.execute("INSERT OR REPLACE INTO vv VALUES (?, ?)", (origin, self._vv[origin]))
        except _WriteFailed:
            log.warning("a write failed; retrying the group job by job", exc_info=True)
            conn.execute("ROLLBACK")
            self._vv, self._ticket_seq = saved
            return self._run_group(jobs, savepoints=True)
        except sqlite3.Error as broken:
            log.exception("write failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._vv, self._ticket_seq = saved
            err = StorageError(f"could not write to {self.path}: {broken}")
            return [_Result(error=err) for _ in jobs], False
        return results, True

    def _committed(
        self,
        jobs: list[_Job],
        results: list[_Result],
        saved: tuple[dict[str, int], int],
        started: float,
        started_ns: int,
        error: Exception | None,
    ) -> None:
        if error is not None:
            log.error("commit failed: %s", error)
            if self._wconn.in_transaction:
                self._wconn.execute("ROLLBACK")
            self._vv, self._ticket_seq = saved
            err = StorageError(f"could not write to {self.path}: {error}")
            results = [_Result(error=err) for _ in jobs]
        self._finish(jobs, results, started, started_ns)

    def _finish(
        self, jobs: list[_Job], results: list[_Result], started: float, started_ns: int
    ) -> None:
        try:
            if self._on_commit is not None:
                self._on_commit(len(jobs), time.perf_counter() - started)
            if self._on_commit_spans is not None:
                traced = [j.trace for j, r in zip(jobs, results, strict=True) if r.error is None]
                self._on_commit_spans(traced, started_ns, time.time_ns(), len(jobs))
        except Exception:
            log.exception("commit hook failed")
        self._deliver(jobs, results, dict(self._vv))
        if self._pending:
            # After the replies just released have gone out, not before them.
            self._schedule_group(jobs[0].future.get_loop())
        else:
            self._busy = False
            self._idle.set()

    def _deliver(self, jobs: list[_Job], results: list[_Result], vv: dict[str, int]) -> None:
        self._committed_vv = vv
        changes: list[Change] = []
        counts = self._counts
        for job, res in zip(jobs, results, strict=True):
            changes.extend(res.changes)
            for old, new in res.counts:
                if old is not None:
                    counts[old] = counts.get(old, 0) - 1
                if new is not None:
                    counts[new] = counts.get(new, 0) + 1
            if job.future.done():
                continue
            if res.error is not None:
                job.future.set_exception(res.error)
            elif job.answer is None:
                job.future.set_result(res.value)
            else:
                view = res.value[0]
                try:
                    job.future.set_result((view, job.answer(view)))
                except Exception as failed:
                    job.future.set_exception(failed)
        if changes:
            for listener in list(self._listeners):
                try:
                    listener(changes)
                except Exception:
                    log.exception("store listener failed")

    def _run_job(self, job: _Job) -> _Result:
        if job.record is not None:
            return self._run_record(job)
        if job.build is None:
            return self._run_remote(job)
        return self._run_local(job)

    def _run_record(self, job: _Job) -> _Result:
        assert job.record is not None and job.code is not None
        current = self._load_record(self._wconn, job.code)
        planned = job.record(current, self._clock.now())
        if planned is None:
            return _Result(value=current)
        kind, fields = planned
        try:
            op = Operation(
                origin=self.region,
                seq=self._vv.get(self.region, 0) + 1,
                hlc=self.hlc.now(),
                ticket=job.code,
                kind=kind,
                fields=fields,
                trace_context=dict(job.trace),
            )
            if self._sign is not None:
                self._unsigned.append(op)
            record, _, _ = self._apply(self._wconn, op)
        except Exception as exc:
            raise _WriteFailed(str(exc)) from exc
        return _Result(value=record, changes=[Change(op=op, ticket=None, local=True)])

    def _run_local(self, job: _Job) -> _Result:
        assert job.build is not None
        conn = self._wconn
        if job.request_id:
            row = conn.execute(
                "SELECT code FROM requests WHERE request_id=?", (job.request_id,)
            ).fetchone()
            if row is not None:
                return _Result(value=(self._load_view(conn, row[0]), None))
        now = self._clock.now()
        if job.code is None:
            current = None
            code = f"{self.region_code}-{self._ticket_seq + 1:06d}"
        else:
            code = job.code
            replicated = self._load(conn, code)
            if replicated is not None and replicated.created:
                current = TicketView.from_replicated(replicated)
            elif job.may_create:
                current = None
            else:
                raise NotFound(f"no ticket {code}; check the code (e.g. VEL-000123)")
        kind, fields = job.build(current, now)
        if current is None and kind != TICKET_CREATE:
            raise InvalidArgument("a new ticket must be created by a create operation")
        try:
            return self._write_local(job, code, kind, fields, new=job.code is None)
        except Exception as exc:
            raise _WriteFailed(str(exc)) from exc

    def _write_local(
        self, job: _Job, code: str, kind: str, fields: dict[str, Any], new: bool
    ) -> _Result:
        conn = self._wconn
        if new:
            self._ticket_seq += 1
        seq = self._vv.get(self.region, 0) + 1
        op = Operation(
            origin=self.region,
            seq=seq,
            hlc=self.hlc.now(),
            ticket=code,
            kind=kind,
            fields=fields,
            trace_context=dict(job.trace),
        )
        if self._sign is not None:
            self._unsigned.append(op)
        ticket, previous, digest = self._apply(conn, op, new=new)
        if job.request_id:
            conn.execute("INSERT INTO requests VALUES (?, ?)", (job.request_id, code))
        view = TicketView.from_replicated(ticket, digest)
        change = Change(op=op, ticket=view, local=True, previous_state=previous)
        return _Result(value=(view, op), changes=[change])

    def _run_remote(self, job: _Job) -> _Result:
        """Apply a replicated batch. Each ticket it touches is read once, merged with every
        operation for it in the batch, and written once; the operations go in with one
        ``executemany``. A node catching up applies thousands of operations per batch, and
        per-operation statements, encodings and digests were most of its cost."""
        conn = self._wconn
        applied: list[Operation] = []
        changes: list[Change] = []
        touched: dict[str, tuple[ReplicatedTicket, CountKey | None]] = {}
        op_rows: list[tuple[Any, ...]] = []
        try:
            stored = self._load_bodies(
                conn, {op.ticket for op in job.remote if op.kind.startswith("ticket.")}
            )
            for op in job.remote:
                if op.seq != self._vv.get(op.origin, 0) + 1:
                    # Duplicates (seq <= have) are normal with several peers; gaps cannot
                    # come from a well-behaved peer and are skipped until the missing ops
                    # arrive.
                    continue
                view = None
                if not op.kind.startswith("ticket."):
                    _, previous, _ = self._apply_record(conn, op)
                else:
                    entry = touched.get(op.ticket)
                    if entry is None:
                        body = stored.get(op.ticket)
                        ticket = (
                            ReplicatedTicket.from_json(orjson.loads(body))
                            if body is not None
                            else ReplicatedTicket(op.ticket)
                        )
                        counted = _count_key(ticket.values) if ticket.created else None
                        entry = touched[op.ticket] = (ticket, counted)
                    ticket = entry[0]
                    previous = State(ticket.values["state"]) if ticket.created else None
                    apply_in_place(ticket, op)
                    op_rows.append(_op_row(op))
                    self._vv[op.origin] = op.seq
                    self._dirty_vv.add(op.origin)
                    if self.want_views:
                        # Watchers see each operation's result, so this one is encoded now.
                        view = TicketView.from_replicated(ticket, ticket.digest())
                applied.append(op)
                changes.append(Change(op=op, ticket=view, local=False, previous_state=previous))
            self.hlc.observe_many(op.hlc for op in applied)
            conn.executemany("INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?)", op_rows)
            conn.executemany(
                _UPSERT_TICKET,
                [self._ticket_row(ticket, counted) for ticket, counted in touched.values()],
            )
        except Exception as exc:
            # Part of the batch may be written: roll it back with the savepoint path.
            raise _WriteFailed(str(exc)) from exc
        return _Result(value=applied, changes=changes)

    @staticmethod
    def _load_bodies(conn: sqlite3.Connection, codes: set[str]) -> dict[str, bytes]:
        """Stored bodies of the tickets among ``codes``, in a few queries, not one each."""
        wanted = sorted(codes)
        found: dict[str, bytes] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            found.update(
                conn.execute(
                    f"SELECT code, body FROM tickets WHERE code IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        return found

    def _ticket_row(self, ticket: ReplicatedTicket, counted: CountKey | None) -> tuple[Any, ...]:
        values = ticket.values
        self._job_counts.append((counted, _count_key(values) if ticket.created else None))
        body = ticket.encode()
        return _ticket_row(ticket, body, hashlib.sha256(body).hexdigest())

    def _apply(
        self, conn: sqlite3.Connection, op: Operation, new: bool = False
    ) -> tuple[ReplicatedTicket, State | None, str]:
        if not op.kind.startswith("ticket."):
            return self._apply_record(conn, op)
        self._insert_op(conn, op)
        # A code this node just allocated cannot exist yet: no need to look it up.
        ticket = (None if new else self._load(conn, op.ticket)) or ReplicatedTicket(op.ticket)
        previous = State(ticket.values["state"]) if ticket.created else None
        counted = _count_key(ticket.values) if ticket.created else None
        apply_in_place(ticket, op)
        values = ticket.values
        self._job_counts.append((counted, _count_key(values) if ticket.created else None))
        body = ticket.encode()
        digest = hashlib.sha256(body).hexdigest()
        row = _ticket_row(ticket, body, digest)
        if self._deferred.on:
            self._deferred.tickets.append(row)
        else:
            conn.execute(_UPSERT_TICKET, row)
        self._vv[op.origin] = op.seq
        self._dirty_vv.add(op.origin)
        return ticket, previous, digest

    def _apply_record(
        self, conn: sqlite3.Connection, op: Operation
    ) -> tuple[ReplicatedTicket, State | None, str]:
        self._insert_op(conn, op)
        record = self._load_record(conn, op.ticket) or ReplicatedTicket(op.ticket)
        apply_in_place(record, op)
        body = record.encode()
        digest = hashlib.sha256(body).hexdigest()
        conn.execute(
            "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
            (record.code, str(record.values.get("queue", "")), digest, body),
        )
        self._vv[op.origin] = op.seq
        self._dirty_vv.add(op.origin)
        return record, None, digest

    def _insert_op(self, conn: sqlite3.Connection, op: Operation) -> None:
        row = _op_row(op)
        if self._deferred.on:
            self._deferred.ops.append(row)
        else:
            conn.execute(_INSERT_OP, row)

    @staticmethod
    def _load_record(conn: sqlite3.Connection, key: str) -> ReplicatedTicket | None:
        row = conn.execute("SELECT body FROM records WHERE key=?", (key,)).fetchone()
        return ReplicatedTicket.from_json(orjson.loads(row[0])) if row else None

    def get_record(self, key: str) -> ReplicatedTicket | None:
        return self._load_record(self._rconn, key)

    def records(self, prefix: str, queue: str = "") -> list[ReplicatedTicket]:
        sql = "SELECT body FROM records WHERE key >= ? AND key < ?"
        args: list[Any] = [prefix, prefix + "\uffff"]
        if queue:
            sql += " AND queue=?"
            args.append(queue)
        return [
            ReplicatedTicket.from_json(orjson.loads(row[0]))
            for row in self._rconn.execute(sql, args)
        ]

    @staticmethod
    def _load(conn: sqlite3.Connection, code: str) -> ReplicatedTicket | None:
        row = conn.execute("SELECT body FROM tickets WHERE code=?", (code,)).fetchone()
        return ReplicatedTicket.from_json(orjson.loads(row[0])) if row else None

    def _load_view(self, conn: sqlite3.Connection, code: str) -> TicketView:
        ticket = self._load(conn, code)
        if ticket is None or not ticket.created:
            raise NotFound(f"no ticket {code}; check the code (e.g. VEL-000123)")
        return TicketView.from_replicated(ticket)

    # ----- reads (event loop thread, committed data only) ---------------------------------

    def get(self, code: str) -> TicketView:
        return self._load_view(self._rconn, code.strip().upper())

    def get_replicated(self, code: str) -> ReplicatedTicket | None:
        return self._load(self._rconn, code)

    def list_tickets(self, flt: TicketFilter, page_size: int, page_token: str) -> Page:
        where, args = _filter_terms(flt)
        total = self._rconn.execute(
            f"SELECT count(*) FROM tickets WHERE {' AND '.join(where)}", args
        ).fetchone()[0]
        if page_token:
            after_at, after_code = _decode_token(page_token)
            where.append("(created_at, code) > (?, ?)")
            args.extend([after_at, after_code])
        rows = self._rconn.execute(
            f"SELECT body, created_at, code FROM tickets WHERE {' AND '.join(where)} "
            "ORDER BY created_at, code LIMIT ?",
            [*args, page_size + 1],
        ).fetchall()
        more = len(rows) > page_size
        rows = rows[:page_size]
        views = tuple(
            TicketView.from_replicated(ReplicatedTicket.from_json(orjson.loads(r[0]))) for r in rows
        )
        token = _encode_token(rows[-1][1], rows[-1][2]) if more and rows else ""
        return Page(tickets=views, next_token=token, total=total)

    def open_load(self) -> dict[str, int]:
        """Open tickets per engineer, as assignee or as second engineer (indexed counts)."""
        where, args = _filter_terms(TicketFilter(states=tuple(OPEN_STATES)))
        load: dict[str, int] = {}
        for column in ("assignee", "second_engineer"):
            rows = self._rconn.execute(
                f"SELECT {column}, count(*) FROM tickets WHERE {column} != '' AND "
                f"{' AND '.join(where)} GROUP BY {column}",
                args,
            )
            for name, count in rows:
                load[name] = load.get(name, 0) + int(count)
        return load

    def version_vector(self) -> dict[str, int]:
        """Highest contiguous seq per origin that is durable here."""
        return dict(self._committed_vv)

    @property
    def durable_vv(self) -> Mapping[str, int]:
        """``version_vector()`` without the copy, for readers that must not change it: a
        new object after every commit, never modified, so a reader may tell whether it
        changed by identity."""
        return self._committed_vv

    def read_ops(self, after: Mapping[str, int], limit: int) -> list[Operation]:
        """For each origin named in ``after``, its operations past ``after[origin]``, in seq
        order, at most ``limit`` in all."""
        ops: list[Operation] = []
        for origin in sorted(after):
            rows = self._rconn.execute(
                "SELECT origin, seq, hlc, ticket, kind, fields, trace, signature FROM ops "
                "WHERE origin=? AND seq>? ORDER BY seq LIMIT ?",
                (origin, after[origin], limit - len(ops)),
            ).fetchall()
            ops.extend(_op_from_row(r) for r in rows)
            if len(ops) >= limit:
                break
        return ops

    def digest(self) -> tuple[int, str]:
        rows = self._rconn.execute(
            "SELECT code, digest FROM tickets UNION ALL SELECT key, digest FROM records"
        ).fetchall()
        created = self._rconn.execute("SELECT count(*) FROM tickets WHERE created=1").fetchone()
        return int(created[0]), node_digest(rows)

    def ticket_counts(self) -> dict[CountKey, int]:
        """Durable tickets by (state, queue, tier). Kept up to date at each commit rather
        than counted: a scan of every ticket every few seconds stalls the loop on a big
        desk."""
        return {key: n for key, n in self._counts.items() if n}

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        await asyncio.to_thread(self._committer.stop)
        self._wconn.close()
        self._rconn.close()


def _count_key(values: Mapping[str, Any]) -> CountKey:
    return (values.get("state", ""), values.get("queue", ""), values.get("tier") or "none")


def _ticket_row(ticket: ReplicatedTicket, body: bytes, digest: str) -> tuple[Any, ...]:
    """The ``tickets`` row, in column order: the indexed fields, body, the added columns."""
    values = ticket.values
    return (
        ticket.code,
        int(ticket.created),
        values.get("state", ""),
        values.get("queue", ""),
        values.get("customer", ""),
        values.get("kind", ""),
        values.get("created_at", ""),
        digest,
        body,
        *(values.get(c) or "" for c in _ADDED_COLUMNS),
    )


def _op_row(op: Operation) -> tuple[Any, ...]:
    return (
        op.origin,
        op.seq,
        op.hlc,
        op.ticket,
        op.kind,
        op.fields_json(),
        orjson.dumps(dict(op.trace_context)),
        op.signature,
    )


def _op_from_row(row: tuple[Any, ...]) -> Operation:
    origin, seq, hlc, ticket, kind, fields, trace, signature = row
    return Operation(
        origin=origin,
        seq=seq,
        hlc=hlc,
        ticket=ticket,
        kind=kind,
        fields=orjson.loads(fields),
        trace_context=orjson.loads(trace),
        signature=bytes(signature),
    )


def _encode_token(created_at: str, code: str) -> str:
    return base64.urlsafe_b64encode(canonical_json([created_at, code])).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        created_at, code = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        return str(created_at), str(code)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            "page token is not one this node gave out; start again without --page-token"
        ) from exc


__all__ = ["SqliteTicketStore", "SundeskError"]
