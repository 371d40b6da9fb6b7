"""python -m nzip: the nzip command."""

import sys

from .cli import main

sys.exit(main())
