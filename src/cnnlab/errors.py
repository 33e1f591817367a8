"""The one exception type for mistakes a user can fix (bad file, bad flag, missing data), and the one way to
warn about a problem that does not stop the work.

The CLI prints such an error as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

import sys


class UserError(Exception):
    """A problem with the user's input, told in one line that names the thing and the fix."""


def notice(message: str) -> None:
    """A non-fatal note for the user: one line on stderr, as the CLI prints its errors."""
    print(f"cnnlab: warning: {message}", file=sys.stderr, flush=True)
