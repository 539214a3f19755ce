"""`python -m sync.spark`: the Spark driver of a backfill, for spark-submit and local runs.

    python -m sync.spark --config ks2os.toml [--mapping FILE | --table T] [--restart] [--no-cdc]
    spark-submit [spark options] deploy/spark/ks2os_spark.py --config ks2os.toml

The same arguments, exit codes and one-line JSON summary as `ks2os backfill`
(0 done, 1 the run could not go on, 2 a usage or configuration mistake).
spark-submit merges the driver's stderr (the log) into its stdout: there,
the summary is the JSON line with a "run_id".
The Spark session comes from spark-submit's options, or, run with plain
`python -m`, from `--master` (default `local[*]`). SIGTERM or SIGINT
cancels the running wave; the run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

import orjson

from sync.cli import (
    DEFAULT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    one_line,
    stop_on_signals,
)
from sync.errors import ConfigError, Ks2osError
from sync.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sync.spark",
        description="Backfill a Keyspaces table into OpenSearch with Spark tasks.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration (default: $KS2OS_CONFIG, else ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--mapping", metavar="FILE", help="the table's mapping file (default: from the config)"
    )
    parser.add_argument(
        "--table",
        metavar="KEYSPACE.TABLE",
        help="the table (or alias) of the config's mappings when it names several",
    )
    parser.add_argument(
        "--restart", action="store_true", help="start a new run instead of resuming"
    )
    parser.add_argument(
        "--no-cdc",
        action="store_true",
        help="load a table without CDC anyway (a snapshot: later changes are not followed)",
    )
    parser.add_argument(
        "--master",
        metavar="URL",
        help="Spark master when not run by spark-submit (default: local[*])",
    )
    parser.add_argument(
        "--app-name", default="ks2os-backfill", help="Spark application name (default: %(default)s)"
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=None, help="log line format"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    return parser


def _config_path(args: argparse.Namespace) -> str | None:
    explicit = args.config or os.environ.get("KS2OS_CONFIG")
    if explicit:
        return str(explicit)
    return DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None


def main(argv: Sequence[str] | None = None) -> int:
    # AWS Glue passes arguments of its own to the job's script (--JOB_ID, --JOB_RUN_ID,
    # --TempDir...): they are named in the log and otherwise left alone.
    args, unknown = build_parser().parse_known_args(argv)
    configure_logging(level=args.log_level, fmt=args.log_format)
    if unknown:
        logging.getLogger("ks2os").warning("ignoring arguments: %s", " ".join(unknown))
    # PySpark's gateway logs every connection it opens and closes at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        return _run(args)
    except ConfigError as exc:
        sys.stderr.write(f"ks2os: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except Ks2osError as exc:
        sys.stderr.write(f"ks2os: {one_line(exc)}\n")
        return EXIT_FAILED


def _run(args: argparse.Namespace) -> int:
    from sync.config import load_config
    from sync.spark.driver import run_spark_backfill
    from sync.spark.shipping import check_for_spark
    from sync.tables import only_table, select_tables

    cfg = load_config(_config_path(args))
    # One table per Spark run: the tasks already spread it over the cluster.
    tables = select_tables(cfg, mapping=args.mapping, table=args.table)
    mapping = only_table(tables, "python -m sync.spark")
    check_for_spark(cfg)  # before a Spark session costs anything
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "PySpark is not installed", hint="pip install 'ks2os[spark]', or run under spark-submit"
        ) from None
    builder = SparkSession.builder.appName(args.app_name)
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    try:
        with stop_on_signals() as stop:
            summary = run_spark_backfill(
                spark, cfg, mapping, restart=args.restart, stop=stop, require_cdc=not args.no_cdc
            )
    finally:
        spark.stop()
    # One JSON line on stdout, as `ks2os backfill` prints; logs go to stderr.
    sys.stdout.write(orjson.dumps(dataclasses.asdict(summary)).decode() + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
