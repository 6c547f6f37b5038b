"""``python -m helpers.bench``: the benchmark's command line (see helpers.bench)."""

import sys

from helpers.bench.run import main

sys.exit(main())
