"""The one exception type for mistakes a user can fix (bad file, bad flag, missing data), the one way to
warn about a problem that does not stop the work, and the one way such a line names a setting (a flag on the
command line, a keyword in Python).

The CLI prints such an error as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""

import contextlib
import os
import sys
from pathlib import PurePath


class UserError(Exception):
    """A problem with the user's input, told in one line that names the thing and the fix."""


def notice(message: str) -> None:
    """A non-fatal note for the user: one line on stderr, as the CLI prints its errors."""
    print(f"cnnlab: warning: {message}", file=sys.stderr, flush=True)


# Messages below the CLI serve both surfaces: `cnnlab train --val-fraction 2` and `cnnlab.train(val_fraction=2)`.
# The command line marks itself in the environment, so its threads and the processes it starts (a private Ray
# cluster, torchrun's ranks) name flags too; Python, the default, names keywords.
SURFACE = "CNNLAB_SURFACE"
PYTHON_NAMES = {"tensorboard_dir": "tensorboard", "mlflow_uri": "mlflow"}  # flags the API folds into one keyword
_NO_VALUE = object()


@contextlib.contextmanager
def command_line():
    """While the CLI runs a command: `option` names flags."""
    before = os.environ.get(SURFACE)
    os.environ[SURFACE] = "cli"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SURFACE, None)
        else:
            os.environ[SURFACE] = before


def on_command_line() -> bool:
    return os.environ.get(SURFACE) == "cli"


def either(command_line: str, python: str) -> str:
    """Advice in the words of the surface the user is on: a command to run, or the Python call."""
    return command_line if on_command_line() else python


def option(name: str, value=_NO_VALUE, *, metavar: str | None = None) -> str:
    """A setting as the user spelled it: '--time-budget 45s' on the command line, "time_budget='45s'" in Python;
    without a value '--train-images' or 'train_images'; a True value is the bare flag ('--tta', 'tta=True'); a
    metavar stands for any value ('--epochs N', 'epochs=N')."""
    if on_command_line():
        flag = "--" + name.replace("_", "-")
        shown = metavar if metavar is not None else None if value is _NO_VALUE or value is True else value
        return flag if shown is None else f"{flag} {shown}"
    keyword = PYTHON_NAMES.get(name, name)
    if metavar is not None:
        return f"{keyword}={metavar}"
    if value is _NO_VALUE:
        return keyword
    return f"{keyword}={str(value)!r}" if isinstance(value, (str, PurePath)) else f"{keyword}={value!r}"
