"""`python -m mfdcomp` runs the command line."""

import sys

from mfdcomp.cli import main

sys.exit(main())
