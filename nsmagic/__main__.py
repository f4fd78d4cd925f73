"""python -m nsmagic: see nsmagic.cli."""

import sys

from nsmagic.cli import main

sys.exit(main())
