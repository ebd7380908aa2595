"""``python -m mfdcomp.cli``."""

import sys

from mfdcomp.cli import main

sys.exit(main())
