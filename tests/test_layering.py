"""Which parts of camflow may import which: the CLI is a client of the core, never a part of it."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["orchestrator.api.app", "orchestrator.service", "orchestrator.engine.reconciler"],
)
def test_the_core_never_imports_the_cli(module: str) -> None:
    # A fresh interpreter: in this one, other tests have imported the CLI already.
    probe = (
        f"import sys, {module}\n"
        "cli = sorted(m for m in sys.modules if m.startswith('orchestrator.cli'))\n"
        "print(','.join(cli))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"{module} pulls in {done.stdout.strip()}"


def test_the_cli_lives_in_one_package() -> None:
    from pathlib import Path

    import orchestrator

    top = {p.stem for p in Path(orchestrator.__file__).parent.glob("*.py")}
    strays = {
        m
        for m in top
        if m.startswith("cli") or m in {"demo", "samples", "scaffold", "trial", "oneshot"}
    }
    assert not strays, f"CLI modules outside orchestrator/cli/: {sorted(strays)}"
