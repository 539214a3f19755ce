"""The Spark driver of a backfill: the CLI's run, read by waves of Spark tasks.

Flow::

    Job on the driver (checks the mapping, creates the index and the state index)
      -> plan_run, the CLI's own: resume the table's unfinished run, else a new
         run of N ranges (N from spark.ranges, system.size_estimates or cores)
      -> a wave: every range not done whose lease is free -> one Spark
         partition each -> run_partition on the executors -> a RangeResult each
      -> ranges a task handed back (budget spent) -> the rest of each is split,
         and the pieces become new ranges of the run in the state index
      -> the next wave, until every range is done -> the run is finished

The state index stays the record of progress, with the CLI's documents:
`ks2os backfill` resumes a run this driver left, and this driver resumes
one the CLI left (or shares a run with CLI workers through the leases). A
Spark run shows as such in the state index: its ranges are leased under
`spark:<application id>#<range>`, and the driver keeps a live worker
document of role `backfill-spark` while it runs (`StateStore.heartbeat`).

Why waves: a task works under a budget (`spark.task_rows`,
`spark.task_seconds`) and hands the rest of its range back with the token
it reached, so no task runs for hours on a skewed range while the other
cores wait; the driver splits that rest into ranges sized from what the task
saw, and the next wave spreads them over every core. See docs/spark.md.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cassandra import DriverException, OperationTimedOut
from cassandra.cluster import Session

from sync.config import Config
from sync.errors import ConfigError, TerminalError, TransientError
from sync.jobs import Job
from sync.jobs.backfill import _check_cdc, _finish, plan_run, state_key
from sync.mapping import TableMapping
from sync.sources.cql import MURMUR3_RING, Ring, TokenRange, ring_for
from sync.spark.plan import (
    Budget,
    RangePlan,
    SizeEstimate,
    Split,
    planned_ranges,
    size_estimate,
    split_pieces,
    split_rest,
)
from sync.spark.shipping import check_for_spark, for_executors
from sync.spark.task import Outcome, RangeResult, TaskSpec, WrapSink, owner_name, run_partition
from sync.state import BackfillRun, LeaseLost, RangeState, StateStore

if TYPE_CHECKING:
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

RUNNER_ROLE = "backfill-spark"
# A stop request is looked for this often while a wave runs.
_STOP_POLL_S = 0.25


@dataclass
class SparkBackfillSummary:
    """What a Spark backfill did; the CLI backfill's summary plus how the run was driven."""

    run_id: str
    ranges: int  # ranges of the run at the end (splits included)
    rows_read: int = 0
    written: int = 0
    stale: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    complete: bool = False  # every range of the run is done (False: stopped early)
    runner: str = "spark"
    application: str = ""  # the Spark application id
    planned: str = "resumed"  # how a new run's range count was chosen (setting, size_estimates…)
    waves: int = 0
    tasks: int = 0
    splits: int = 0  # ranges whose rest was split into new ranges

    def add(self, result: RangeResult) -> None:
        self.tasks += 1
        self.rows_read += result.rows_read
        self.written += result.written
        self.stale += result.stale
        self.dead_lettered += result.dead_lettered


def run_spark_backfill(
    spark: SparkSession,
    cfg: Config,
    mapping: TableMapping,
    *,
    restart: bool = False,
    require_cdc: bool = False,
    stop: threading.Event | None = None,
    job: Job | None = None,
    wrap_sink: WrapSink | None = None,
) -> SparkBackfillSummary:
    """Backfill the mapping's table into its index with Spark tasks; see the module docstring.

    `restart`, `require_cdc` and `stop` mean what they mean for `run_backfill`.
    `wrap_sink` wraps each task's writer (tests inject faults with it).
    """
    check_for_spark(cfg)
    started = time.monotonic()
    own_job = job is None
    job = job or Job(cfg, mapping)
    try:
        _check_cdc(job, require_cdc)
        log.info(job.info.version_rule())
        context = spark.sparkContext
        key = state_key(job)
        before = job.store.get_run(key)
        ring = ring_for(job.info.partitioner)
        plan = _range_plan(job, cfg, context.defaultParallelism, ring)
        run = plan_run(job.store, key, plan.count, restart, ring)
        resumed = before is not None and before.run_id == run.run_id
        if not resumed:
            log.info("planned %d ranges (from %s)", run.range_count, plan.basis)
        summary = SparkBackfillSummary(
            run_id=run.run_id,
            ranges=run.range_count,
            application=context.applicationId,
            planned="resumed" if resumed else plan.basis,
        )
        spec = TaskSpec(
            cfg=for_executors(cfg),
            mapping=mapping,
            index=job.index,
            run=run,
            runner=f"spark:{context.applicationId}",
            budget=Budget(cfg.spark.task_rows, float(cfg.spark.task_seconds)),
            wrap_sink=wrap_sink,
        )
        waves = _Waves(context, job.store, key, spec, summary, stop or threading.Event())
        waves.run()
        summary.seconds = time.monotonic() - started
        log.info(
            "spark backfill %s: %d rows read, %d written, %d stale, %d dead-lettered in %.1f s "
            "(%d waves, %d tasks, %d ranges split)",
            "complete" if summary.complete else "stopped",
            summary.rows_read,
            summary.written,
            summary.stale,
            summary.dead_lettered,
            summary.seconds,
            summary.waves,
            summary.tasks,
            summary.splits,
        )
        return summary
    finally:
        if own_job:
            job.close()


def _range_plan(job: Job, cfg: Config, cores: int, ring: Ring) -> RangePlan:
    estimate = None
    if cfg.spark.ranges <= 0:
        estimate = read_size_estimate(job.session, job.info.keyspace, job.info.name, ring)
    return planned_ranges(cfg.spark.ranges, estimate, cfg.spark.range_mb, cores)


def read_size_estimate(
    session: Session, keyspace: str, table: str, ring: Ring = MURMUR3_RING
) -> SizeEstimate | None:
    """The table's size from `system.size_estimates`, or None where it is not served."""
    try:
        rows = session.execute(
            "SELECT range_start, range_end, partitions_count, mean_partition_size "
            "FROM system.size_estimates WHERE keyspace_name = %s AND table_name = %s",
            (keyspace, table),
        )
    except (DriverException, OperationTimedOut) as exc:
        # Advisory only: keyspaces_local serves no such table, an IAM policy may forbid it.
        log.info("no size estimate for %s.%s (%s); planning by cores", keyspace, table, exc)
        return None
    parsed = []
    for row in rows:
        fields = row if isinstance(row, dict) else row._asdict()
        with contextlib.suppress(TypeError, ValueError):
            parsed.append(
                (
                    int(fields["range_start"]),
                    int(fields["range_end"]),
                    int(fields["partitions_count"] or 0),
                    int(fields["mean_partition_size"] or 0),
                )
            )
    estimate = size_estimate(parsed, ring)
    if estimate is not None:
        log.info(
            "size estimate of %s.%s: %d MB in %d partitions",
            keyspace,
            table,
            estimate.bytes >> 20,
            estimate.partitions,
        )
    return estimate


class _Waves:
    """The driver's loop: a wave of tasks, then splits, until every range is done."""

    def __init__(
        self,
        context: SparkContext,
        store: StateStore,
        key: str,
        spec: TaskSpec,
        summary: SparkBackfillSummary,
        stop: threading.Event,
    ) -> None:
        self.context, self.store, self.key = context, store, key
        self.spec, self.summary, self.stop = spec, summary, stop
        self.group = f"ks2os-backfill-{spec.run.run_id}-{time.monotonic_ns()}"
        self.ended = threading.Event()

    def run(self) -> None:
        watcher = threading.Thread(target=self._watch, name="ks2os-spark-watch", daemon=True)
        watcher.start()
        try:
            while not self.stop.is_set():
                if self._step():
                    self.summary.complete = True
                    return
        finally:
            self.ended.set()
            watcher.join(timeout=5)
            self.store.leave(RUNNER_ROLE, self.key, self.spec.runner)

    def _step(self) -> bool:
        """One wave (or a wait for ranges others hold); True when the run is complete."""
        run = self._current()
        pending = [s for s in self.store.list_ranges(run) if not s.done]
        self.summary.ranges = run.range_count
        if not pending:
            _finish(self.store, run)
            return True
        now = self.store.now_ms()
        free = [s for s in pending if s.lease.free_for(owner_name(self.spec.runner, s.number), now)]
        if not free:
            # Every range left is leased by another worker (a CLI backfill, say): wait for
            # it to finish them or for its leases to expire.
            expiry = min(s.lease.expires_at_ms for s in pending)
            self.stop.wait(min(max((expiry - now) / 1000, 0.1), self.store.lease_ms / 1000))
            return False
        results = self._wave(run, [s.number for s in free])
        self._check(results)
        self._split(run, results, pending)
        return False

    def _current(self) -> BackfillRun:
        run = self.store.get_run(self.key)
        if run is None or run.run_id != self.spec.run.run_id:
            raise TransientError(
                f"backfill run {self.spec.run.run_id} of {self.key} was replaced while it ran "
                "(a --restart elsewhere)",
                hint="the newer run goes on; run again to resume it",
            )
        return run

    def _wave(self, run: BackfillRun, numbers: list[int]) -> list[RangeResult]:
        self.summary.waves += 1
        spec = replace(self.spec, run=run)
        self.context.setJobGroup(
            self.group,
            f"ks2os backfill {self.key}: wave {self.summary.waves}, {len(numbers)} ranges",
            interruptOnCancel=True,
        )
        partitions = self.context.parallelize(numbers, len(numbers))
        try:
            results: list[RangeResult] = partitions.mapPartitions(
                functools.partial(run_partition, spec)
            ).collect()
        except Exception as exc:
            if self.stop.is_set():
                log.info("wave %d cancelled: stopping", self.summary.waves)
                return []
            raise TransientError(
                f"a Spark task of wave {self.summary.waves} failed for good: {task_error(exc)}",
                hint="see the executor logs; run again to resume (finished ranges are kept)",
            ) from None
        for result in results:
            self.summary.add(result)
        done = sum(r.outcome is Outcome.DONE for r in results)
        log.info(
            "wave %d: %d ranges, %d done, %d handed back, %d held elsewhere; %d rows read so far",
            self.summary.waves,
            len(results),
            done,
            sum(r.outcome is Outcome.BUDGET for r in results),
            sum(r.outcome in (Outcome.BUSY, Outcome.LOST) for r in results),
            self.summary.rows_read,
        )
        return results

    def _check(self, results: list[RangeResult]) -> None:
        failed = [r for r in results if r.outcome is Outcome.FAILED]
        if not failed:
            return
        first = failed[0]
        error = ConfigError if first.config_error else TerminalError
        raise error(f"backfill range {first.number}: {first.error}")

    # ---- splitting what a task handed back ---------------------------------------------

    def _split(
        self, run: BackfillRun, results: list[RangeResult], pending: list[RangeState]
    ) -> None:
        back = {r.number: r for r in results if r.outcome is Outcome.BUDGET}
        if not back:
            return
        # Enough pieces that every core has a range next wave (others' ranges count too).
        others = len(pending) - len(back)
        idle_share = math.ceil(max(self.context.defaultParallelism - others, 1) / len(back))
        plans = []
        for state in self.store.get_ranges(run, list(back)):
            if state.done or state.lease.owner is not None:
                continue  # another worker took it since: its rest is theirs
            split = self._plan_split(state, back[state.number], idle_share)
            if split is not None:
                plans.append((state, split))
        if not plans:
            return
        children = [child for _, split in plans for child in split.children]
        try:
            grown, created = self.store.extend_run(run, children)
        except LeaseLost:
            log.info("the run changed while splitting; the next wave splits again if need be")
            return
        made = {state.number for state in created}
        number = run.range_count
        shrunk = []
        for state, split in plans:
            mine = range(number, number + len(split.children))
            number += len(split.children)
            # Only once every piece exists may the range give its rest up; until then
            # the pieces overlap it, which costs reads, never rows.
            if all(n in made for n in mine):
                shrunk.append((state, replace(state, range_end=split.parent_end)))
                log.info(
                    "range %d handed back at token %s: its rest is now ranges %d-%d",
                    state.number,
                    state.last_token,
                    mine.start,
                    mine.stop - 1,
                )
        stored = self.store.update_ranges(shrunk)
        self.summary.splits += sum(s is not None for s in stored)
        self.summary.ranges = grown.range_count

    def _plan_split(self, state: RangeState, result: RangeResult, idle_share: int) -> Split | None:
        whole = TokenRange(state.range_start, state.range_end)
        read_from = whole.resume_from(result.resumed_at).start
        read_width = (result.reached or read_from) - read_from
        pieces = split_pieces(
            rows=result.rows_read,
            seconds=result.seconds,
            read_width=read_width,
            rest_width=whole.resume_from(state.last_token).width,
            budget=self.spec.budget,
            idle_share=idle_share,
        )
        return split_rest(whole, state.last_token, pieces)

    # ---- beside the waves -----------------------------------------------------------------

    def _watch(self) -> None:
        """Say this run is alive (role `backfill-spark`); cancel the wave when asked to stop."""
        beat = 0.0
        while not self.ended.is_set():
            if time.monotonic() - beat >= self.store.renew_interval_s:
                try:
                    self.store.heartbeat(RUNNER_ROLE, self.key, self.spec.runner)
                except Exception as exc:  # a missed heartbeat must not stop the run
                    log.warning("could not record the Spark runner in the state index: %s", exc)
                beat = time.monotonic()
            if self.stop.wait(_STOP_POLL_S):
                self.context.cancelJobGroup(self.group)
                return


_PYTHON_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Unavailable|Lost)): (.+)$", re.M)


def task_error(exc: BaseException) -> str:
    """The Python error a Spark task died of, on one line (Spark wraps it in Java's)."""
    found = _PYTHON_ERROR.findall(str(exc))
    python = [f for f in found if not f[0].startswith(("org.apache", "java.", "py4j."))]
    if python:
        name, message = python[-1]
        return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__
