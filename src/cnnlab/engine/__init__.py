"""The training engine as small public functions, in the shape of torchvision's reference train.py:

    setup = prepare(config)                   # device, precision, data on the device, model, optimizer
    train_one_epoch(setup, epoch)             # one pass over the training split
    evaluate(setup, setup.val)                # loss, accuracy and logits of a split
    fit(config, run_dir, callbacks=[...])     # the loop: checkpoints, history, callbacks, final files

One loop serves a standalone model and a fused group of K ensemble members (cnnlab.fused): a setup
has K members (1 for a standalone model), each with its own generator (shuffle, augmentation), its
own learning rate and its own run directory.

    engine.setup       TrainState, Setup, prepare (model options, class weights, plateaus, feature cache)
    engine.step        learning rates, member losses, batches, the train step and its CUDA graph,
                       train_one_epoch, evaluate, warm_up
    engine.throughput  a budgeted run's speed probe (undone like warm_up) and chosen epochs (cnnlab.budget)
    engine.checkpoint  optimizer tensors, checkpoints saved and loaded, final weights
    engine.loop        Context, fit, the epoch, finish, default callbacks

The names below the engine (devices, data on the device, inference, torchrun) are re-exported here
for code written against earlier versions; they live in cnnlab.device, cnnlab.data.prepared,
cnnlab.inference and cnnlab.torchrun, and the read side imports them from there.
"""

from cnnlab.data.prepared import (MEMORY_PREFIX, DeviceData, check_training_data, data_fingerprint, load_data,
                                  split_data, to_input)
from cnnlab.device import (AUTO_PRECISION_ENV, auto_precision, autocast_for, cpu_has_native_bf16, device_name,
                           environment, float_dtype, resolve_device, synchronize)
from cnnlab.inference import load_model, predict_logits, run_autocast
from cnnlab.torchrun import Distributed, distributed_from_env, shard

from .checkpoint import (checkpoint_of, config_for_resume, final_weights, load_checkpoints, load_member_weights,
                         optimizer_state, optimizer_tensors, save_checkpoints, stored_precision, with_prefix)
from .loop import Context, NonFiniteLoss, default_callbacks, finish, fit, fit_setup, model_metadata, ordered, run_epoch
from .setup import (Setup, TrainState, cache_features, class_weight_tensor, make_plateaus, model_options,
                    modern_augment, prepare)
from .step import (GraphedStep, OnStep, apply_learning_rates, evaluate, forward, learning_rates, make_batch,
                   member_input, member_losses, split_logits, train_one_epoch, train_step, warm_up)

__all__ = [
    "AUTO_PRECISION_ENV", "MEMORY_PREFIX", "Context", "DeviceData", "Distributed", "GraphedStep", "NonFiniteLoss",
    "OnStep", "Setup", "TrainState", "apply_learning_rates", "auto_precision", "autocast_for", "cache_features",
    "check_training_data", "checkpoint_of", "class_weight_tensor", "config_for_resume", "cpu_has_native_bf16",
    "data_fingerprint", "default_callbacks", "device_name", "distributed_from_env", "environment", "evaluate",
    "final_weights", "finish", "fit", "fit_setup", "float_dtype", "forward", "learning_rates", "load_checkpoints",
    "load_data", "load_member_weights", "load_model", "make_batch", "make_plateaus", "member_input",
    "member_losses", "model_metadata", "model_options", "modern_augment", "optimizer_state", "optimizer_tensors",
    "ordered", "predict_logits", "prepare", "resolve_device", "run_autocast", "run_epoch", "save_checkpoints",
    "shard", "split_data", "split_logits", "stored_precision", "synchronize", "to_input", "train_one_epoch",
    "train_step", "warm_up", "with_prefix",
]
