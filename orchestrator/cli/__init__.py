"""The ``camflow`` command line and its helpers (demo, samples, scaffold, trial runs).

The API never imports from here: the CLI is one client of the core, not part of it.
"""

from orchestrator.cli.main import app, start_api

__all__ = ["app", "start_api"]
