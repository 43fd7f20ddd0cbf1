"""The ``camflow`` command line and its helpers (demo, samples, scaffold, trial runs).

The API never imports from here: the CLI is one client of the core, not part of it.
"""

import sys

from orchestrator.cli.main import app, start_api
from orchestrator.errors import CamflowError


def main() -> None:
    """The ``camflow`` command: what camflow refuses on purpose (a store it cannot reach,
    say) is one line saying what to do, not a traceback, whichever command met it."""
    try:
        app(prog_name="camflow")
    except CamflowError as exc:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)


__all__ = ["app", "main", "start_api"]
