"""`python -m ssmkit.cli ...` is the `ssmkit` command."""

import sys

from ssmkit.cli import main

sys.exit(main())
