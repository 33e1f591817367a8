"""cnnlab: a workbench for CNNs on small grayscale image datasets.

The Python API (documented in the README): train, evaluate, predict, load_run, study, ensemble,
combine, tune, export, lr_find, summary; Run (a run directory as an object), TrainConfig, RunDir,
register_model (a model of your own under a name), and cnnlab.callbacks.
"""

from cnnlab.version import __version__  # noqa: F401

from cnnlab.api import (Run, combine, ensemble, evaluate, export, load_run, lr_find, predict, study,  # noqa: E402
                        submission, summary, train, tune)
from cnnlab.callbacks import Callback, EarlyStopping, LambdaCallback  # noqa: E402
from cnnlab.config import RECIPES, TrainConfig  # noqa: E402
from cnnlab.errors import UserError  # noqa: E402
from cnnlab.models import list_models, register_model  # noqa: E402
from cnnlab.runs import RunDir  # noqa: E402

__all__ = ["Callback", "EarlyStopping", "LambdaCallback", "RECIPES", "Run", "RunDir", "TrainConfig", "UserError",
           "combine", "ensemble", "evaluate", "export", "list_models", "load_run", "lr_find", "predict",
           "register_model", "study", "submission", "summary", "train", "tune", "__version__"]
