"""The model zoo. Importing this package registers every model."""

# registration order is the order `cnnlab models` lists them: the report's order
from . import seed_cnns, inception, resnet, transfer  # noqa: F401,I001  (registration side effects)
from . import small_resnets  # noqa: F401,E402  (the modern recipe's models, issue 11)
from .registry import (ModelInfo, count_parameters, create_architecture, create_model, list_models, model_info,
                       register_model)

__all__ = ["ModelInfo", "count_parameters", "create_architecture", "create_model", "list_models", "model_info",
           "register_model"]
from .summary import Summary, keras_shape, summarize  # noqa: E402

__all__ += ["REPORT_STUDY_MODELS", "Summary", "keras_shape", "summarize"]

REPORT_STUDY_MODELS = ("cnn1", "cnn2", "cnn3", "cnn4", "inception", "resnet50")  # the models the report compared
