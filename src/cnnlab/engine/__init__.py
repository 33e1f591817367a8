"""The training engine as small public functions, in the shape of torchvision's reference train.py:

    setup = prepare(config)                   # device, precision, data on the device, model, optimizer
    train_one_epoch(setup, epoch)             # one pass over the training split
    evaluate(setup, setup.val)                # loss, accuracy and logits of a split
    fit(config, run_dir, callbacks=[...])     # the loop: checkpoints, history, callbacks, final files

One loop serves a standalone model and a fused group of K ensemble members (cnnlab.fused): a setup
has K members (1 for a standalone model), each with its own generator (shuffle, augmentation), its
own learning rate and its own run directory.

    engine.setup       TrainState, Setup, prepare (model options, class weights, plateaus, feature cache)
    engine.model_size  a model too large for the free memory is refused before it is built (meta device)
    engine.step        learning rates, member losses, batches, the train step and its CUDA graph,
                       train_one_epoch, evaluate, warm_up
    engine.throughput  a budgeted run's speed probe (undone like warm_up) and chosen epochs (cnnlab.budget)
    engine.compile_probe  compile = "auto": compiled or eager, by a timed probe (undone too), cached per machine
    engine.width_choice   budget_width: a budget that holds many epochs trains a wider model (cpu-budget)
    engine.checkpoint  optimizer tensors, checkpoints saved and loaded, final weights
    engine.loop        Context, fit, the epoch, finish, default callbacks

Names from below the engine (cnnlab.device, data.prepared, inference, torchrun) are re-exported for
code written against earlier versions; the read side imports them from where they live.
"""
# ruff: noqa: F401

from cnnlab.data.prepared import (MEMORY_PREFIX, DeviceData, check_training_data, data_fingerprint, load_data,
                                  split_data, to_input)
from cnnlab.device import (AUTO_PRECISION_ENV, auto_precision, autocast_for, device_name,
                           environment, float_dtype, resolve_device, synchronize)
from cnnlab.inference import load_model, predict_logits, run_autocast
from cnnlab.torchrun import Distributed, distributed_from_env, shard

from .checkpoint import (checkpoint_of, config_for_resume, final_weights, load_checkpoints, load_member_weights,
                         optimizer_state, optimizer_tensors, refuse_lost_checkpoint, save_checkpoints, stored_precision,
                         with_prefix)
from .compile_probe import settle
from .loop import Context, NonFiniteLoss, default_callbacks, finish, fit, fit_setup, model_metadata, ordered, run_epoch
from .setup import (Setup, TrainState, cache_features, class_weight_tensor, make_plateaus, model_options,
                    modern_augment, prepare)
from .step import (GraphedStep, OnStep, apply_learning_rates, evaluate, forward, learning_rates, make_batch,
                   member_input, member_losses, split_logits, train_one_epoch, train_step, warm_up)
