"""The one exception type for mistakes a user can cause (bad path, bad image, unknown token, wrong
resolution, tampered file, unknown target). Only a command line's `main()` catches it: it prints
`error: <message>` to stderr and exits with status 2. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A user-caused failure; the message is one sentence naming the thing and the fix."""

    exit_status = 2
