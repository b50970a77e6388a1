"""``python -m elmojax``: the same command line as the ``elmojax`` script."""

import sys

from elmojax.cli import main

sys.exit(main())
