"""The `ks2os` command: parses arguments, loads the configuration, calls a job.

Nothing here knows how a job works. Every user mistake (a wrong flag, an
unknown command, a bad or missing config file, credentials a service
refuses, a mapping OpenSearch refuses, a metrics port in use: a
`ConfigError`) ends as one line on stderr and exit code 2; a run that cannot
go on (a server unreachable, a table without CDC: any other `Ks2osError`)
ends as one line and exit code 1. Every library's exceptions are converted
where ks2os calls it (see `sync.errors`), so tracebacks are for bugs only.
`verify` exits 0 when the index matches the table and 1 when it does not,
its report on stdout (a run that could not go on has no report).

The commands that take tables (`backfill`, `follow`, `verify`, `reindex`, `cleanup`,
`status`) run on every mapping the config names, or the one `--table` picks
(`sync.tables`; `_mapping_option` and `_selected_tables` for a new command,
`_load_table_mapping` for one that takes a single table); `sync.jobs.multi`
runs them. Each table's outcome is one JSON line on stdout: `table`,
`alias`, `outcome` (`done`, `failed` or `skipped`), then the job's summary
or the `error`. Each failure is one line on stderr, led by its table when
several ran, and the exit code is the worst of the tables'.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from sync import __version__
from sync.config import Config, config_source, describe, load_config
from sync.errors import ConfigError, Ks2osError
from sync.errors import one_line as one_line  # spark's entry point and others import it here
from sync.logs import configure_logging

if TYPE_CHECKING:
    from sync.jobs.multi import TableRun
    from sync.mapping import TableMapping

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_DIVERGENT = 1  # verify: the index differs from the table (a report on stdout)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
DEFAULT_CONFIG = "ks2os.toml"

Command = Callable[[argparse.Namespace, Config], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ks2os",
        description="Keep OpenSearch indexes in sync with Amazon Keyspaces tables.",
    )
    parser.add_argument("--version", action="version", version=f"ks2os {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration (default: $KS2OS_CONFIG, else ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log line format (default: text on a terminal, json otherwise)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    config = commands.add_parser("config", help="inspect the configuration")
    config_commands = config.add_subparsers(
        dest="config_command", metavar="ACTION", parser_class=_Parser
    )
    config_commands.required = True
    check = config_commands.add_parser(
        "check",
        help="validate the configuration and print it, secrets masked; say what was read",
    )
    check.add_argument(
        "--defaults",
        action="store_true",
        help="with no config file, check the defaults and KS2OS_* variables (else an error)",
    )
    check.set_defaults(handler=_config_check)

    backfill = commands.add_parser(
        "backfill", help="load the whole table into its index (resumes an unfinished run)"
    )
    _mapping_option(backfill)
    backfill.add_argument(
        "--restart",
        action="store_true",
        help="start a new run instead of resuming the unfinished one",
    )
    backfill.add_argument(
        "--no-cdc",
        action="store_true",
        help="load a table without CDC anyway (a snapshot: later changes are not followed)",
    )
    backfill.set_defaults(handler=_backfill)

    follow = commands.add_parser(
        "follow", help="apply the table's CDC stream to its index until stopped (SIGTERM/SIGINT)"
    )
    _mapping_option(follow)
    follow.set_defaults(handler=_follow)

    deadletter = commands.add_parser(
        "deadletter", help="see and re-drive changes that could not be written"
    )
    deadletter_commands = deadletter.add_subparsers(
        dest="deadletter_command", metavar="ACTION", parser_class=_Parser
    )
    deadletter_commands.required = True
    listing = deadletter_commands.add_parser(
        "list", help="print the dead letters of the mapping's table, oldest first"
    )
    _mapping_option(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_deadletter_list)
    replay = deadletter_commands.add_parser(
        "replay",
        help="read each dead-lettered row again over CQL, write it, and remove its entry",
    )
    _mapping_option(replay)
    replay.set_defaults(handler=_deadletter_replay)

    verify = commands.add_parser(
        "verify",
        help="compare the index with the table, document by document (exit 0: they match, "
        "1: they differ); --repair rewrites what differs",
    )
    _mapping_option(verify)
    share = verify.add_mutually_exclusive_group()
    share.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="a quick check of about N rows, spread over every token range",
    )
    share.add_argument(
        "--fraction",
        type=_share,
        metavar="F",
        help="a quick check of a share F (0 < F <= 1) of the token ranges, each read whole",
    )
    verify.add_argument(
        "--repair",
        action="store_true",
        help="rewrite the divergent documents through the writer, at versions a newer "
        "stream change still beats",
    )
    verify.add_argument(
        "--settle",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long a difference must last to count (longer than the follower's lag; default 5)",
    )
    verify.add_argument("--json", action="store_true", help="print the report as one JSON object")
    verify.set_defaults(handler=_verify)

    reindex = commands.add_parser(
        "reindex",
        help="build <alias>_v<N+1> from the mapping file while changes keep flowing, check "
        "it, and move the alias to it atomically (resumes an unfinished rebuild)",
    )
    _mapping_option(reindex)
    ending = reindex.add_mutually_exclusive_group()
    ending.add_argument(
        "--abort",
        action="store_true",
        help="before the swap: delete the new index and its progress; the alias stays",
    )
    ending.add_argument(
        "--delete-old",
        action="store_true",
        help="delete the old index once the alias has moved (default: keep it "
        "reindex.keep_old_hours, then ks2os cleanup deletes it)",
    )
    reindex.add_argument("--json", action="store_true", help="one JSON line per table")
    reindex.set_defaults(handler=_reindex)

    cleanup = commands.add_parser(
        "cleanup",
        help="remove tombstones, expired rows and state no replay can need any more "
        "(safe while other workers run; run it daily)",
    )
    _mapping_option(cleanup)
    cleanup.add_argument(
        "--dry-run", action="store_true", help="count what would be removed, remove nothing"
    )
    cleanup.set_defaults(handler=_cleanup)

    status = commands.add_parser(
        "status",
        help="where each table's sync stands: streams and shards (checkpoints, leases, lag), "
        "workers, backfill and rebuild progress, gaps, dead letters (writes nothing)",
    )
    _mapping_option(status)
    status.add_argument(
        "--json", action="store_true", help="one JSON object per table, one line each"
    )
    status.set_defaults(handler=_status)

    mapping = commands.add_parser("mapping", help="work with mapping files")
    mapping_commands = mapping.add_subparsers(
        dest="mapping_command", metavar="ACTION", parser_class=_Parser
    )
    mapping_commands.required = True
    generate = mapping_commands.add_parser(
        "generate", help="propose a mapping file from a table's schema"
    )
    generate.add_argument("table", metavar="KEYSPACE.TABLE")
    generate.add_argument("--alias", help="index alias (default: KEYSPACE-TABLE)")
    generate.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    generate.add_argument(
        "--force", action="store_true", help="overwrite the --output file if it exists"
    )
    generate.set_defaults(handler=_mapping_generate)
    return parser


def _mapping_option(parser: argparse.ArgumentParser) -> None:
    """--mapping and --table: which tables a command runs on (`_selected_tables`)."""
    parser.add_argument(
        "--mapping",
        metavar="FILE",
        help="this mapping file instead of the config's `mapping` or `mappings`",
    )
    parser.add_argument(
        "--table",
        metavar="KEYSPACE.TABLE",
        help="only this table of the config's mappings (or the one with this alias); "
        "default: every table",
    )


def _selected_tables(args: argparse.Namespace, cfg: Config) -> list[TableMapping]:
    """The tables a command runs on: every mapping the config names, or --mapping, or --table."""
    from sync.tables import select_tables

    return select_tables(cfg, mapping=args.mapping, table=args.table)


def _load_table_mapping(args: argparse.Namespace, cfg: Config) -> TableMapping:
    """For a command that takes one table: the one selected, else a one-line error."""
    from sync.tables import only_table

    return only_table(_selected_tables(args, cfg), f"ks2os {args.command}")


def _freeze_start_up_objects() -> None:
    """Take what start-up made (modules, classes, libraries' tables) out of the collector's way.

    A job allocates tens of thousands of objects per page (a GetRecords reply,
    a scan page), and every full collection would walk the start-up heap again;
    frozen, it is never walked. `make bench` measured orjson.loads of the same
    bodies at about half the cost with the start-up heap frozen.
    """
    gc.collect()
    gc.freeze()


def _backfill(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.multi import backfill_tables

    tables = _selected_tables(args, cfg)
    _freeze_start_up_objects()
    with stop_on_signals() as stop:
        runs = backfill_tables(
            cfg, tables, restart=args.restart, stop=stop, require_cdc=not args.no_cdc
        )
    return _finish(runs, _print_outcome)


def _follow(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.multi import follow_tables

    tables = _selected_tables(args, cfg)
    _freeze_start_up_objects()
    with stop_on_signals() as stop:
        runs = follow_tables(cfg, tables, stop=stop)
    return _finish(runs, _print_outcome)


def _deadletter_list(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.deadletters import list_dead_letters

    entries = list_dead_letters(cfg, _load_table_mapping(args, cfg))
    for entry in entries:
        if args.json:
            sys.stdout.write(orjson.dumps(entry).decode() + "\n")
        else:
            sys.stdout.write(_entry_line(entry) + "\n")
    sys.stderr.write(f"ks2os: {len(entries)} dead letter(s)\n")
    return EXIT_OK


def _entry_line(entry: dict[str, Any]) -> str:
    """`<id> <at> <what> <reason>`: one entry as a person reads it."""
    when = entry.get("at")
    at = "?" if not isinstance(when, int) else _iso_ms(when)
    if entry.get("record") is not None:
        source = entry.get("source") or {}
        what = f"record {source.get('sequence_number', '?')} of {source.get('shard_id', '?')}"
    else:
        what = f"{entry.get('op')} {entry.get('doc_id')}"
    reason = " ".join(str(entry.get("reason", "")).split())
    return f"{entry.get('id', '-')}  {at}  {what}  {reason}"


def _iso_ms(epoch_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _deadletter_replay(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.deadletters import replay_dead_letters

    mapping = _load_table_mapping(args, cfg)
    with stop_on_signals() as stop:
        summary = replay_dead_letters(cfg, mapping, stop=stop)
    _print_summary(summary)
    if summary.refused_again:
        sys.stderr.write(
            f"ks2os: {summary.refused_again} dead letter(s) refused again: see why with "
            "`ks2os deadletter list`, mend the mapping or the data, and replay again\n"
        )
        return EXIT_FAILED
    return EXIT_OK


def _verify(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.multi import one_after_another
    from sync.jobs.verify import VerifyReport, run_verify

    tables = _selected_tables(args, cfg)

    def verify(mapping: TableMapping) -> VerifyReport:
        return run_verify(
            cfg,
            mapping,
            sample=args.sample,
            fraction=args.fraction,
            repair=args.repair,
            settle_s=args.settle,
            stop=stop,
        )

    def show(run: TableRun[VerifyReport]) -> int:
        if args.json:
            _print_outcome(run)
        elif run.result is not None:
            sys.stdout.write(run.result.text() + "\n")
        elif not run.begun:
            sys.stdout.write(f"verify {run.table}: not run: {NOT_BEGUN}\n")
        return EXIT_DIVERGENT if run.result is not None and not run.result.ok else EXIT_OK

    with stop_on_signals() as stop:
        runs = one_after_another(tables, verify, on_failure=cfg.on_table_failure, stop=stop)
    return _finish(runs, show)


def _reindex(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.multi import one_after_another
    from sync.jobs.reindex import ReindexSummary, run_reindex

    tables = _selected_tables(args, cfg)

    def reindex(mapping: TableMapping) -> ReindexSummary:
        return run_reindex(cfg, mapping, abort=args.abort, delete_old=args.delete_old, stop=stop)

    def show(run: TableRun[ReindexSummary]) -> int:
        if args.json:
            return _print_outcome(run)
        if run.result is not None:
            sys.stdout.write(f"{run.table}: {run.result.text()}\n")
        elif not run.begun:
            sys.stdout.write(f"reindex {run.table}: not run: {NOT_BEGUN}\n")
        return EXIT_OK

    _freeze_start_up_objects()
    with stop_on_signals() as stop:
        runs = one_after_another(tables, reindex, on_failure=cfg.on_table_failure, stop=stop)
    return _finish(runs, show)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rows above 0")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share of the ranges in (0, 1]")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 to 3600)")
    return value


def _cleanup(args: argparse.Namespace, cfg: Config) -> int:
    from sync.jobs.cleanup import run_cleanup
    from sync.jobs.multi import one_after_another

    tables = _selected_tables(args, cfg)
    with stop_on_signals() as stop:
        runs = one_after_another(
            tables,
            lambda mapping: run_cleanup(cfg, mapping, dry_run=args.dry_run, stop=stop),
            on_failure=cfg.on_table_failure,
            stop=stop,
        )
    return _finish(runs, _print_outcome)


def _status(args: argparse.Namespace, cfg: Config) -> int:
    """Each table's status: text for a person, or one JSON line per table (`--json`)."""
    from sync.jobs.multi import one_after_another
    from sync.jobs.status import TableStatus, run_status

    tables = _selected_tables(args, cfg)

    def show(run: TableRun[TableStatus]) -> int:
        if args.json:
            return _print_outcome(run)
        if run.result is not None:
            sys.stdout.write(run.result.text() + "\n")
        elif not run.begun:
            sys.stdout.write(f"status {run.table}: not read: {NOT_BEGUN}\n")
        return EXIT_OK

    with stop_on_signals() as stop:
        runs = one_after_another(
            tables,
            lambda mapping: run_status(cfg, mapping, stop=stop),
            on_failure=cfg.on_table_failure,
            stop=stop,
        )
    return _finish(runs, show)


def _mapping_generate(args: argparse.Namespace, cfg: Config) -> int:
    from sync.clients import cql_session
    from sync.keyspaces import describe_table
    from sync.mapping import default_alias, mapping_from_dict, propose_mapping

    keyspace, dot, table = args.table.partition(".")
    if not dot or not keyspace or not table:
        raise ConfigError(f"{args.table!r} is not KEYSPACE.TABLE", hint="e.g. shop.orders")
    if args.output and not args.force and os.path.exists(args.output):
        raise ConfigError(
            f"{args.output} exists; not overwriting it",
            hint="pass --force to replace it, or -o another file",
        )
    session = cql_session(cfg)
    try:
        key = describe_table(session, keyspace, table).layout
    finally:
        session.cluster.shutdown()
    alias = args.alias or default_alias(keyspace, table)
    text = propose_mapping(keyspace, table, key.columns(), alias=alias)
    # What is written must load: a bad --alias is refused here, not at the first backfill.
    mapping_from_dict(tomllib.loads(text), args.output or "the proposed mapping")
    what = f"mapping of {keyspace}.{table} to the alias {alias}"
    if args.output:
        _write_new(args.output, text, overwrite=args.force)
        sys.stderr.write(f"ks2os: wrote {args.output}: {what}; review its field types\n")
    else:
        sys.stdout.write(text)
        sys.stderr.write(f"ks2os: proposed a {what} (on stdout); review its field types\n")
    return EXIT_OK


def _write_new(path: str, text: str, *, overwrite: bool) -> None:
    """Write `path`; without `overwrite`, only if it does not exist (checked atomically)."""
    try:
        with open(path, "w" if overwrite else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise ConfigError(
            f"{path} exists; not overwriting it", hint="pass --force to replace it"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path}: {exc.strerror}", hint="choose another -o FILE"
        ) from None


NOT_BEGUN = "the run stopped before this table"


def _finish(runs: Sequence[TableRun[Any]], show: Callable[[TableRun[Any]], int]) -> int:
    """Each table's outcome shown (`show` gives its exit code), each failure one line on
    stderr; the run's exit code is the worst: 2 when a table's configuration is wrong, else
    1 when a table failed (or, for verify, differs), else 0.

    Run on one table, a failure reads as it always did; on several, each line starts with
    its table. A bug (not a `Ks2osError`) of a lone table is raised, traceback and all.
    """
    several = len(runs) > 1
    code = EXIT_OK
    for run in runs:
        code = max(code, show(run))
    for run in runs:
        if run.error is None:
            continue
        if not several and not isinstance(run.error, Ks2osError):
            raise run.error
        usage = isinstance(run.error, ConfigError)
        prefix = "ks2os: error: " if usage else "ks2os: "
        table = f"{run.table}: " if several else ""
        sys.stderr.write(f"{prefix}{table}{run.error_line()}\n")
        code = max(code, EXIT_USAGE if usage else EXIT_FAILED)
    return code


def _print_outcome(run: TableRun[Any]) -> int:
    """One table's outcome as one JSON line on stdout: its summary, its error, or not run."""
    head: dict[str, Any] = {"table": run.table, "alias": run.mapping.alias}
    if run.error is not None:
        line = {**head, "outcome": "failed", "error": run.error_line()}
    elif not run.begun or run.result is None:
        line = {**head, "outcome": "skipped", "reason": NOT_BEGUN}
    else:
        line = {**head, "outcome": "done", **_fields(run.result)}
    _print_summary(line)
    return EXIT_OK


def _fields(result: object) -> dict[str, Any]:
    """A job's result as JSON fields: a mapping as it is, a report's own `to_json`, else the
    dataclass's fields."""
    if isinstance(result, Mapping):
        return dict(result)
    to_json = getattr(result, "to_json", None)
    fields = to_json() if callable(to_json) else _plain(result)
    return dict(fields)


def _print_summary(summary: object) -> None:
    """A job's summary as one JSON line on stdout (logs go to stderr)."""
    sys.stdout.write(orjson.dumps(summary, default=_plain).decode() + "\n")


def _plain(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot show {type(value).__name__}")


def _config_check(args: argparse.Namespace, cfg: Config) -> int:
    """The effective configuration on stdout; what it was read from on stderr (names only)."""
    path = _config_path(args)
    if path is None and not args.defaults:
        raise ConfigError(
            f"no config file: no --config, no KS2OS_CONFIG and no ./{DEFAULT_CONFIG}",
            hint="pass --config FILE, or `config check --defaults` to check the defaults "
            "with the KS2OS_* variables alone",
        )
    tables = _table_lines(cfg)  # a mistake in them is the one line, before any report
    source = config_source(path)
    if source.path is None:
        file_line = "none: defaults (--defaults)"
    else:
        from_env = not args.config and os.environ.get("KS2OS_CONFIG")
        named_by = " (named by KS2OS_CONFIG)" if from_env else ""
        file_line = os.path.abspath(source.path) + named_by
    sys.stderr.write(f"ks2os: config file: {file_line}\n")
    variables = ", ".join(source.variables) or "none"
    sys.stderr.write(f"ks2os: KS2OS_* variables read: {variables}\n")
    sys.stderr.writelines(f"ks2os: {line}\n" for line in tables)
    sys.stdout.write(orjson.dumps(describe(cfg), option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK


def _table_lines(cfg: Config) -> list[str]:
    """The mapping files the config names, read and checked as a set: a line per table."""
    from sync.tables import select_tables, table_name

    if not cfg.mapping and not cfg.mappings:
        return ["tables: none named (set mapping or mappings)"]
    return [f"table {table_name(m)} -> alias {m.alias} ({m.path})" for m in select_tables(cfg)]


def _config_path(args: argparse.Namespace) -> str | None:
    """The file named by --config or KS2OS_CONFIG, else ./ks2os.toml if it exists."""
    explicit = args.config or os.environ.get("KS2OS_CONFIG")
    if explicit:
        return str(explicit)
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT, so a job can flush and checkpoint before exiting."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def request_stop(signum: int, frame: object) -> None:
        logging.getLogger("ks2os").info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level, fmt=args.log_format)
    handler: Command = args.handler
    try:
        cfg = load_config(_config_path(args))
        return handler(args, cfg)
    except ConfigError as exc:
        sys.stderr.write(f"ks2os: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except Ks2osError as exc:
        sys.stderr.write(f"ks2os: {one_line(exc)}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:  # before a job took over SIGINT: stop quietly, as asked
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
