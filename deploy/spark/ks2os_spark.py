"""The file spark-submit runs (also the entry point of AWS Glue and EMR Serverless jobs).

    spark-submit [spark options] ks2os_spark.py --config ks2os.toml [--restart] [--no-cdc]

ks2os itself comes from the wheel installed on (or shipped to) the cluster;
this file only calls `python -m sync.spark`'s main. See docs/spark.md.
"""

import sys

from sync.spark.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
