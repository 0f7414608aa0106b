"""`python -m ralu_export.conformance DIR`: check a conformance vector folder against ralu_edge and print each
value that no longer matches (stdout), with a count on stderr; exit status 0 when everything matches, 1 when
something differs, 2 when the folder is not a vector folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ralu_edge.errors import run_cli
from ralu_export.conformance.checking import check_vectors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ralu_export.conformance", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Check a conformance vector folder (index.json + .bin arrays) against ralu_edge: replays "
                    "every recorded run with the recorded denoiser outputs and random draws and prints each "
                    "value that differs. Reads the folder only. Write vectors with "
                    "android_demo/scripts/make_vectors.py.")
    parser.add_argument("folder", type=Path, help="the vector folder, e.g. "
                                                  "android_demo/core/src/test/resources/vectors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        problems = check_vectors(args.folder)
        for line in problems:
            print(line)
        print(f"{len(problems)} mismatches in {args.folder}", file=sys.stderr)
        return 1 if problems else 0

    return run_cli(body)
