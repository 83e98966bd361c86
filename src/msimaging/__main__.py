"""``python -m msimaging`` runs the command line."""

import sys

from msimaging.cli import main

sys.exit(main())
