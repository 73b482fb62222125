"""`python -m ovctl`: the same as the `ovctl` console script."""

import sys

from ovctl.cli import main

sys.exit(main())
