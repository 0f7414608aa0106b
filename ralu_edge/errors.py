"""The one exception type for mistakes a user can cause (bad path, bad image, unknown token, wrong
resolution, tampered file, unknown target). Only a command line's `main()` catches it: it prints
`error: <message>` to stderr and exits with status 2. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A user-caused failure; the message is one sentence naming the thing and the fix."""

    exit_status = 2


def run_cli(body, cleanup=None) -> int:
    """Every command line's epilogue, in one place: run `body()` (its return value, or 0, is the exit status);
    a UserError prints `error: <message>` to stderr and gives 2, Ctrl-C prints `interrupted` and gives 130.
    `cleanup()` runs first in both cases (e.g. remove an output folder the command created)."""
    import sys

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
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
