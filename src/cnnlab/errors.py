"""The one exception type for mistakes a user can fix (bad file, bad flag, missing data).

The CLI prints such an error as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, told in one line that names the thing and the fix."""
