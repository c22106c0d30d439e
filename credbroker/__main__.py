"""``python -m credbroker`` runs the CLI."""

import sys

from credbroker.console import main

sys.exit(main())
