"""``python -m userrl_core.cli``: the same as the ``userrl`` command."""

import sys

from userrl_core.cli.main import main

sys.exit(main())
