"""``python -m medsegr.cli``: the ``medsegr`` command."""

import sys

from medsegr.cli.commands import main

sys.exit(main())
