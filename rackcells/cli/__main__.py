"""``python -m rackcells.cli``: the same as the ``rackcells`` command."""

import sys

from rackcells.cli.main import main

sys.exit(main())
