"""Checkpoints (safetensors tensors + JSON metadata, never pickled) and each member's final weights.

A checkpoint holds one member's model, optimizer, plateau, generator, CPU (and CUDA) random state,
the loop's TrainState with the callbacks' state beside it, the kept best weights and the EMA's, in
the format a standalone run writes, so a fused member's checkpoint also resumes alone."""

from __future__ import annotations

import torch

from cnnlab import runs
from cnnlab.config import TrainConfig, build_config
from cnnlab.errors import UserError, option
from cnnlab.optim import match_parameter_layouts
from cnnlab.runs import RunDir

from .setup import Setup, TrainState


def optimizer_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """A torch optimizer state_dict as safetensors tensors + JSON metadata (never pickled)."""
    groups = [{k: (float(v) if torch.is_tensor(v) else v) for k, v in g.items()} for g in state["param_groups"]]
    tensors, meta = {}, {"param_groups": groups, "state": {}}
    for pid, entries in state["state"].items():
        meta["state"][str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
                meta["state"][str(pid)][key] = "tensor"
            else:
                meta["state"][str(pid)][key] = value
    return tensors, meta


def optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for pid, entries in meta["state"].items():
        state[int(pid)] = {key: tensors[f"optim.{pid}.{key}"] if value == "tensor" else value
                           for key, value in entries.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_of(model_state: dict, optimizer_state_dict: dict, plateau, generator: torch.Generator,
                  state: dict, config: TrainConfig, precision: str, device: torch.device,
                  best_weights: dict | None = None, ema_state: dict | None = None,
                  scaler_state: dict | None = None) -> tuple[dict, dict]:
    """One member's checkpoint, in the format a standalone run writes (a fused member's resumes alone too).
    `state`: the loop's TrainState as a dict, with the callbacks' state merged in; `scaler_state`: fp16's
    GradScaler.state_dict() (floats and ints, kept in the JSON metadata)."""
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    opt_tensors, opt_meta = optimizer_tensors(optimizer_state_dict)
    tensors.update(opt_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    for key, value in (best_weights or {}).items():
        tensors[f"best.{key}"] = value
    for key, value in (ema_state or {}).items():
        tensors[f"ema.{key}"] = value
    meta = {"train_state": state, "optimizer": opt_meta, "scheduler": plateau.state_dict(),
            "config": config.to_dict(), "precision": precision}
    if scaler_state is not None:
        meta["scaler"] = scaler_state
    return tensors, meta


def with_prefix(tensors: dict, prefix: str) -> dict:
    """The tensors stored under `prefix` (model., best., ema.), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_checkpoints(setup: Setup, run_dirs: list[RunDir], best_weights: list[dict | None],
                     states: list[dict]) -> None:
    """Every member's checkpoint into its run directory; `states`: each member's TrainState dict."""
    if setup.group is not None:
        parts = setup.group.member_checkpoints(setup, best_weights, states)
    else:
        opt = setup.optimizer.state_dict()
        ema = setup.ema.state_dict() if setup.ema is not None else None
        scaler = setup.scaler.state_dict() if setup.scaler is not None else None
        parts = [checkpoint_of(setup.model.state_dict(), opt, setup.plateaus[0], setup.generators[0], states[0],
                               setup.config, setup.precision, setup.device, best_weights[0], ema, scaler)]
    for run_dir, (tensors, meta) in zip(run_dirs, parts):
        run_dir.save_checkpoint(tensors, meta)


def load_checkpoints(setup: Setup, run_dirs: list[RunDir]) -> tuple[list[dict | None], list[dict]]:
    """Restore every member from its run directory's checkpoint; returns each member's best weights (or
    None) and its stored state dict (the loop's and the callbacks')."""
    loaded = [run_dir.load_checkpoint() for run_dir in run_dirs]
    for run_dir, (tensors, meta) in zip(run_dirs, loaded):
        if "train_state" not in meta or "optimizer" not in meta or "model.rng" in tensors:
            raise UserError(f"{run_dir.file(runs.CHECKPOINT)}: not a cnnlab checkpoint (damaged or edited)")
    epochs = {meta["train_state"]["epoch"] for _, meta in loaded}
    if len(epochs) > 1:
        raise UserError(f"{', '.join(map(str, run_dirs))}: members stopped at different epochs; resume them one by one")
    try:
        if setup.group is not None:
            setup.group.load_member_checkpoints(setup, loaded)
        else:
            tensors, meta = loaded[0]
            setup.model.load_state_dict(with_prefix(tensors, "model."))
            rates = [g["lr"] for g in setup.optimizer.param_groups]
            setup.optimizer.load_state_dict(optimizer_state(tensors, meta["optimizer"]))
            match_parameter_layouts(setup.optimizer)
            for group, rate in zip(setup.optimizer.param_groups, rates):
                if torch.is_tensor(rate):  # a capturable optimizer keeps its rate in a device tensor
                    group["lr"] = rate.fill_(float(group["lr"]))
            if setup.ema is not None:
                setup.ema.load_state_dict(with_prefix(tensors, "ema."))
            if setup.scaler is not None:
                setup.scaler.load_state_dict(meta["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"{run_dirs[0].file(runs.CHECKPOINT)}: does not fit this model and configuration "
                        f"({str(exc).splitlines()[0]}); start a new run") from None
    for m, (tensors, meta) in enumerate(loaded):
        setup.plateaus[m].load_state_dict(meta["scheduler"])
        setup.lr_holders[m].param_groups[0]["lr"] = float(meta["optimizer"]["param_groups"][0]["lr"])
        setup.generators[m].set_state(tensors["rng.generator"].to(torch.uint8).cpu())
        setup.states[m] = TrainState.from_dict(meta["train_state"])
    tensors, _ = loaded[0]
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and setup.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], setup.device)
    setup.state = setup.states[0]
    return [with_prefix(t, "best.") or None for t, _ in loaded], [dict(meta["train_state"]) for _, meta in loaded]


def final_weights(setup: Setup) -> list[dict[str, torch.Tensor]]:
    """Each member's weights as a standalone model's state dict (the EMA's when EMA is on)."""
    if setup.group is not None:
        return setup.group.member_weights(setup)
    model = setup.ema.module if setup.ema is not None else setup.model
    return [{k: v.detach().clone() for k, v in model.state_dict().items()}]


def load_member_weights(setup: Setup, weights: list[dict[str, torch.Tensor]]) -> None:
    if setup.group is not None:
        setup.group.load_member_weights(setup, weights)
    else:
        (setup.ema.module if setup.ema is not None else setup.model).load_state_dict(weights[0])


def stored_precision(run_dir: RunDir) -> str | None:
    """The precision a checkpointed run trained in (a resume keeps it)."""
    if run_dir.has_checkpoint():
        return runs.tensor_metadata(run_dir.file(runs.CHECKPOINT)).get("precision")
    return None


def config_for_resume(run_dir: RunDir, epochs: int | None = None, device: str | None = None) -> TrainConfig:
    """The stored configuration of a run, with the only settings a resume may change. Fewer epochs than the
    checkpoint holds is refused: nothing trained, and config.json was rewritten to the smaller total."""
    done = run_dir.checkpoint_epoch() if epochs is not None else None
    if done is not None and epochs < done:
        raise UserError(f"{run_dir}: already trained {done} epoch(s); {option('epochs', epochs)} cannot shorten it. Give more "
                        f"than {done} to extend the run, or train a new run for fewer")
    return build_config(run_dir.read_config(), {"epochs": epochs, "device": device})


def refuse_lost_checkpoint(run_dir: RunDir) -> None:
    """A run with finished epochs but no checkpoint cannot continue: training it afresh would clear its history
    and model (a resume of such a run used to do exactly that, and exit 0). A run that never finished an epoch
    has nothing to lose and starts over."""
    if run_dir.has_checkpoint():
        return
    epochs = len(run_dir.history()) if run_dir.file(runs.HISTORY).is_file() else 0
    if epochs or run_dir.file(runs.MODEL).is_file():
        raise UserError(f"{run_dir}: {epochs} finished epoch(s) but no {runs.CHECKPOINT} to continue from (deleted, "
                        f"or checkpoint_every = 0); restore that file, or train a new run without "
                        f"{option('resume')} (this one is left as it is)")


def record_resumed_epochs(run_dirs: list[RunDir], configs: list[TrainConfig]) -> None:
    """config.json holds the epochs a resume trains to: an extension (--resume --epochs N) writes its new total
    before training, so an interrupted extension resumed by the printed command continues to N (it stopped at
    the old total and called the run finished)."""
    for run_dir, cfg in zip(run_dirs, configs):
        stored = run_dir.read_config()
        if stored.get("epochs") != cfg.epochs:
            run_dir.write_config({**stored, "epochs": cfg.epochs})
