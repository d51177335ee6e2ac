"""``python -m nfm`` runs the command line."""

import sys

from nfm.cli import main

sys.exit(main())
