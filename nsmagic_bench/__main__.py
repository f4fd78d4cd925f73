"""python -m nsmagic_bench: the same as `python -m nsmagic bench`."""

import sys

from nsmagic_bench.cli import main

sys.exit(main())
