"""`python -m dynasparse.scale_bench` is `dynasparse scale-bench`."""

import sys

from dynasparse.commands.scale_bench import main

sys.exit(main())
