"""python -m nsmagic.images: the image commands before nsmagic's own CLI mounts them."""

import sys

from nsmagic.images.cli import main

sys.exit(main())
