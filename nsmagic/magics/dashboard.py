"""%dashboard: live CPU and memory plots of the kernel's containers (see nsmagic.widgets)."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

import nsmagic.stats  # noqa: F401 - makes nsmagic.stats.history reachable once loaded


@magics_class
class DashboardMagics(Magics):
    """%dashboard [names...] [--fps N] [--window S] [--rate HZ]; %dashboard stop."""

    @magic_arguments()
    @argument("containers", nargs="*",
              help="names or ids of the containers to show (default: all of them); "
                   "'stop' stops every open dashboard")
    @argument("--fps", type=float, default=2.0, help="frames per second (0.2-4, default 2)")
    @argument("--window", type=float, default=120.0,
              help="seconds of history on the time axis (default 120)")
    @argument("--rate", type=float, default=None,
              help="samples per second while open (default 4, at most 10)")
    @argument("--title", default=None, help="a title above the plots")
    @line_magic
    def dashboard(self, line: str) -> Any:
        """Show live CPU (% of one core, --cpus as a dashed line) and memory (current, peak,
        limit) plots of every running container, updated while other cells run. Start, exit,
        OOM kills and CPU throttling are marked on the time axis. Its cell ends at once, so
        it also updates live in Voila (which shows a cell's outputs only when the cell ends:
        a %%container --plot is seen there only as its final picture). Stopped, it leaves
        the final picture and table.

        Examples::

            %dashboard                    # every container of this kernel
            %dashboard web worker --fps 4
            %dashboard stop               # stop them all (the last frame stays as a PNG)
        """
        try:
            args = parse_argstring(self.dashboard, line)
        except SystemExit:
            raise UsageError(f"bad options: {line!r}; see %dashboard?") from None
        from nsmagic.widgets import show_dashboard, stop_all

        if args.containers == ["stop"]:
            stopped = stop_all()
            print(f"nsmagic: stopped {stopped} dashboard{'s' if stopped != 1 else ''}")
            return None
        show_dashboard(args.containers or None, fps=args.fps, window=args.window,
                       rate=args.rate, title=args.title)
        return None



def shutdown() -> None:
    """Stop open dashboards and the sampler thread (for the extension's unload)."""
    import sys

    widgets = sys.modules.get("nsmagic.widgets.dashboard")
    if widgets is not None:
        widgets.stop_all()
    from nsmagic.monitor import MONITOR

    MONITOR.stop()


__all__ = ["DashboardMagics", "shutdown"]
