"""`python3 -m fiddler_worker`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
