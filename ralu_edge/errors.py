"""The one exception type for mistakes a user can cause (bad path, bad image, unknown token, wrong
resolution, tampered file, unknown target), and the one command-line epilogue that turns it into
`error: <message>` on stderr and exit status 2 (Ctrl-C: status 130). Anything else is a bug and keeps its
traceback. Standard library only."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A user-caused failure; the message is one sentence naming the thing and the fix."""

    exit_status = 2


def run_cli(body: Callable[[], int | None], cleanup: Callable[[], None] | None = None, *,
            interrupted: str = "interrupted") -> int:
    """Every command line's epilogue, in one place: the exit status of `body()` (its return value, or 0 for None).

    A UserError prints `error: <message>` to stderr and gives 2; Ctrl-C prints `interrupted` (e.g. "interrupted;
    rerun with --resume ...") and gives 130. `cleanup()` runs first in both cases (e.g. take back an output folder
    the command created). Any other exception is a bug: it propagates with its traceback, no clean-up."""
    try:
        status = body()
    except UserError as e:
        if cleanup is not None:
            cleanup()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        if cleanup is not None:
            cleanup()
        print(interrupted, file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
