"""`python -m nsmagic.runtime.server FD [--once]`: the fork server's process."""

from nsmagic.runtime.server.loop import main

main()
