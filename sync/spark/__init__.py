"""ks2os's snapshot work as Apache Spark tasks: a backfill whose token ranges are Spark partitions.

Optional: `pip install 'ks2os[spark]'` brings PySpark. Each task scans its
range with cassandra-driver and writes through ks2os's own bulk writer (the
same reader, version rule, document builder, statics merge and state
documents as `ks2os backfill`); no Spark Cassandra connector and no
opensearch-hadoop. Entry points:

- `python -m sync.spark --config ks2os.toml` (and `spark-submit` of
  `deploy/spark/ks2os_spark.py`, which calls the same `main`);
- `backfill(spark, "ks2os.toml")` from a notebook, or `run_spark_backfill`
  with a `Config` and a `TableMapping` already loaded.

How to run it on AWS Glue and Amazon EMR: docs/spark.md.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from sync.spark.driver import SparkBackfillSummary, run_spark_backfill

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["SparkBackfillSummary", "backfill", "run_spark_backfill"]


def backfill(
    spark: SparkSession,
    config: str | None = None,
    *,
    mapping: str | None = None,
    table: str | None = None,
    restart: bool = False,
    require_cdc: bool = False,
    stop: threading.Event | None = None,
) -> SparkBackfillSummary:
    """Backfill a table from a notebook: `backfill(spark, "ks2os.toml")`.

    `config` is the TOML file read on the driver, overlaid with the driver's
    `KS2OS_*` environment (None: defaults and environment only); `mapping`
    overrides the file's `mapping`, and `table` picks one of its `mappings`.
    Secrets are never shipped to the executors: they read theirs from their
    own environment (docs/spark.md).
    """
    from sync.config import load_config
    from sync.tables import only_table, select_tables

    cfg = load_config(config)
    chosen = only_table(select_tables(cfg, mapping=mapping, table=table), "backfill(spark, ...)")
    return run_spark_backfill(
        spark, cfg, chosen, restart=restart, require_cdc=require_cdc, stop=stop
    )
