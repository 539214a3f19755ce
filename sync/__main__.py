"""`python -m sync` runs the ks2os command."""

import sys

from sync.cli import main

sys.exit(main())
