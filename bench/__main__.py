"""python -m bench [--quick] [--only P2,P3,...] [--out FOLDER] [--json]"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench.report import Figure, print_table, save

# name: (full size, quick size)
SIZES = {
    "overhead_clips": (10, 2),
    "throughput_clips": (60, 8),
    "faces_clips": (5, 1),
    "engine_clips": (300, 40),
    "kube_clips": (40, 4),
    "active_runs": (10_000, 500),
    "finished_runs": (50_000, 1_000),
    "cameras": (10_000, 300),
    # Runs of the figures that swing most with the machine's other load; the median.
    "rounds": (3, 1),
    "gpu_clips": (5, 1),
}


def scenarios(size: Callable[[str], int]) -> dict[str, Callable[[], list[Figure]]]:
    # Imported late: each pulls in what it needs (the model, the emulator, moto).
    def local() -> list[Figure]:
        from bench import local_runs

        return local_runs.measure(size("overhead_clips"), size("throughput_clips"), size("rounds"))

    def faces() -> list[Figure]:
        from bench import faces_loop

        return faces_loop.measure(size("faces_clips"), size("rounds"))

    def engine() -> list[Figure]:
        from bench import engine_ceiling

        return engine_ceiling.measure(size("engine_clips"), size("rounds"))

    def kube() -> list[Figure]:
        from bench import kube_runs

        return kube_runs.measure(size("kube_clips"))

    def fleet() -> list[Figure]:
        from bench import fleet as fleet_figures

        return fleet_figures.measure(size("active_runs"), size("finished_runs"), size("cameras"))

    def gpu() -> list[Figure]:
        from bench import gpu_faces

        return gpu_faces.measure(size("gpu_clips"))

    return {
        "local": local,
        "faces": faces,
        "engine": engine,
        "kube": kube,
        "fleet": fleet,
        "gpu": gpu,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="camflow's figures, each against a baseline measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized runs (about 2 min)")
    parser.add_argument(
        "--only", help="comma-separated: local, faces, engine, kube, fleet, gpu (default: all)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where to save")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    logging.basicConfig(level=logging.ERROR)  # stage failures of the bad files are expected

    def size(name: str) -> int:
        return SIZES[name][1 if args.quick else 0]

    table = scenarios(size)
    chosen = args.only.split(",") if args.only else list(table)
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {sorted(table)}")
    # Wide enough for the table when piped (CI logs), as on a terminal.
    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    figures: list[Figure] = []
    for name in chosen:
        with console.status(f"measuring {name}…"):
            figures.extend(table[name]())
    data, chart = save(figures, args.out)
    if args.json:
        print(json.dumps([f.model_dump() | {"ratio": f.ratio} for f in figures], indent=2))
    else:
        print_table(figures, console)
        saved = f" and {chart}" if chart else " (no chart: matplotlib is not installed)"
        console.print(f"saved {data}{saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
