"""`make bench`: throughput and latency ratios. Nothing to measure until the jobs land."""

import sys

sys.stderr.write("make bench: not built yet: the benchmark arrives with the backfill and follow jobs.\n")
sys.exit(1)
