"""``python -m credbroker`` runs the CLI."""

import sys

from credbroker.cli import main

sys.exit(main())
