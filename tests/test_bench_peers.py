"""bench/peers.py: the plain-PyTorch peers of the speed bench are cnnlab's report models, layer for layer
(same trainable parameters, same output), and are built without cnnlab."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest
import torch

from cnnlab.models import count_parameters, create_model

PEERS_FILE = Path(__file__).resolve().parents[1] / "bench" / "peers.py"


def load_peers():
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers = load_peers()


@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_peer_has_cnnlabs_trainable_parameters(name):
    peer = peers.build_peer(name, num_classes=10)
    trainable, _ = count_parameters(create_model(name, num_classes=10))
    assert peers.trainable_parameters(peer) == trainable


@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_peer_has_cnnlabs_parameter_shapes_in_order(name):
    ours = [tuple(p.shape) for p in peers.build_peer(name, 10).parameters()]
    theirs = [tuple(p.shape) for p in create_model(name, num_classes=10).parameters()]
    assert ours == theirs


def test_peers_give_logits_and_do_not_use_cnnlab():
    for name in peers.PEERS:
        out = peers.build_peer(name, 10).train()(torch.rand(4, *peers.INPUT_SHAPE))
        assert out.shape == (4, 10), name
    imported = {alias.name for node in ast.walk(ast.parse(PEERS_FILE.read_text()))
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    imported |= {node.module for node in ast.walk(ast.parse(PEERS_FILE.read_text())) if isinstance(node, ast.ImportFrom)}
    assert not any(str(name).startswith("cnnlab") for name in imported), imported
    assert peers.build_peer("resnet9") is None
