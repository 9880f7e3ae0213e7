"""`python -m dynasparse` is the `dynasparse` command."""

import sys

from dynasparse.cli import main

sys.exit(main())
