"""An onnxruntime session for a predict loop: inference.lean_model's torch.fx graph written out as ONNX
node by node (convolutions, linear layers, ReLU, max-pooling, BatchNorm, flatten, sums, products,
concatenations, zero padding and global pooling: what the built-in models' lean graphs hold), so that
small CPU batches can move to onnxruntime's kernels, which at batch 1 beat PyTorch's (tuned-cnn, one
image, 2-core AVX2-only AMD EPYC: 0.27 ms a forward against the lean copy's 0.6-0.7).

Why not torch.onnx, which `cnnlab.export` uses: its exporter takes 1.5-3 s for tuned-cnn (2-core AMX
Xeon and AVX2-only EPYC), too long to stall a predict loop, and while it traces it switches oneDNN off
for the whole process, which changes the numbers of anything computed meanwhile (measured: big
batches predicted beside an export on a thread lost their bit-identity to the stored logits). Writing
these few ops takes milliseconds and touches nothing global. A graph with any other op gives None and
the lean copy stays in charge; so does a session whose logits miss the lean copy's on a probe batch.
"""

from __future__ import annotations

import importlib.util
import operator

import numpy as np
import torch
from torch import fx, nn

from cnnlab import test_time
from cnnlab.data.prepared import to_input

OPSET = 17
IR_VERSION = 8  # ONNX IR of opset 17; onnxruntime refuses a newer IR than it knows
INPUT, OUTPUT = "images", "logits"


class Unsupported(Exception):
    """An op (or an argument of one) this writer does not translate."""


def available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))


def _pair(value) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return list(value)
    raise Unsupported(f"size {value!r}")


class _Writer:
    """Nodes and initializers of one graph, named as they are made."""

    def __init__(self):
        from onnx import numpy_helper
        self.numpy_helper = numpy_helper
        self.nodes, self.initializers = [], []

    def const(self, array, dtype=np.float32) -> str:
        name = f"c{len(self.initializers)}"
        if isinstance(array, torch.Tensor):
            array = array.detach().float().contiguous().numpy()
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array, dtype=dtype), name))
        return name

    def emit(self, op: str, inputs: list[str], **attributes) -> str:
        from onnx import helper
        name = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [name], **attributes))
        return name


def _function(w: _Writer, node: fx.Node, name) -> str:
    target, args, kwargs = node.target, node.args, dict(node.kwargs)
    if target is torch.cat:
        if kwargs.keys() - {"dim"}:
            raise Unsupported("cat keywords")
        return w.emit("Concat", [name(a) for a in args[0]], axis=args[1] if len(args) > 1 else kwargs.get("dim", 0))
    if kwargs:
        raise Unsupported(f"keywords of {target}")
    if target is torch.conv2d and len(args) == 7:  # lean_model passes every argument
        x, weight, bias, stride, padding, dilation, groups = args
        ph, pw = _pair(padding)
        inputs = [name(x), name(weight)] + ([name(bias)] if bias is not None else [])
        return w.emit("Conv", inputs, strides=_pair(stride), pads=[ph, pw, ph, pw], dilations=_pair(dilation),
                      group=groups)
    if target is torch._C._nn.linear and len(args) == 3:
        x, weight, bias = args
        out = w.emit("MatMul", [name(x), w.const(name.tensor(weight).t())])
        return w.emit("Add", [out, name(bias)]) if bias is not None else out
    if target in (torch.relu, torch.relu_, nn.functional.relu):
        return w.emit("Relu", [name(args[0])])
    if target is torch.max_pool2d and len(args) == 6:
        x, kernel, stride, padding, dilation, ceil = args
        ph, pw = _pair(padding)
        return w.emit("MaxPool", [name(x)], kernel_shape=_pair(kernel), strides=_pair(stride or kernel),
                      pads=[ph, pw, ph, pw], dilations=_pair(dilation), ceil_mode=int(bool(ceil)))
    if target is torch.amax and len(args) == 3 and tuple(args[1]) == (2, 3) and args[2] is True:  # GlobalMaxPool
        return w.emit("GlobalMaxPool", [name(args[0])])
    if target is torch.flatten:
        if tuple(args[1:]) not in ((1,), (1, -1)):
            raise Unsupported(f"flatten{tuple(args[1:])}")
        return w.emit("Flatten", [name(args[0])], axis=1)
    if target is torch.batch_norm and len(args) == 9:
        x, weight, bias, mean, var, training, _, eps, _ = args
        if training or mean is None:
            raise Unsupported("batch statistics")
        channels = name.tensor(mean).numel()
        scale = name(weight) if weight is not None else w.const(np.ones(channels))
        shift = name(bias) if bias is not None else w.const(np.zeros(channels))
        return w.emit("BatchNormalization", [name(x), scale, shift, name(mean), name(var)], epsilon=float(eps))
    ops = {operator.add: "Add", torch.add: "Add", operator.mul: "Mul", torch.mul: "Mul"}
    if target in ops and len(args) == 2:
        return w.emit(ops[target], [name(a) if isinstance(a, fx.Node) else w.const(np.array(float(a))) for a in args])
    raise Unsupported(str(target))


def _module(w: _Writer, module: nn.Module, x: str) -> str:
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and module.output_size in (1, (1, 1)):
        return w.emit("GlobalAveragePool" if isinstance(module, nn.AdaptiveAvgPool2d) else "GlobalMaxPool", [x])
    if type(module) is nn.ZeroPad2d:
        left, right, top, bottom = module.padding
        return w.emit("Pad", [x, w.const(np.array([0, 0, top, left, 0, 0, bottom, right]), np.int64)])
    raise Unsupported(type(module).__name__)


def onnx_model(graph_module: fx.GraphModule, input_shape: list[int]):
    """The ModelProto of a lean graph (batch size free); raises Unsupported for what it cannot write."""
    from onnx import TensorProto, helper

    w, names, output = _Writer(), {}, None

    def name(node) -> str:
        if not isinstance(node, fx.Node) or node not in names:
            raise Unsupported(f"argument {node!r}")
        return names[node]

    def tensor(node) -> torch.Tensor:  # a constant's value (a weight computed in the graph is not one)
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            raise Unsupported(f"a computed weight ({node!r})")
        return getattr(graph_module, node.target)

    name.tensor = tensor
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            if names:
                raise Unsupported("more than one input")
            names[node] = INPUT
        elif node.op == "get_attr":
            names[node] = w.const(getattr(graph_module, node.target))
        elif node.op == "call_function":
            names[node] = _function(w, node, name)
        elif node.op == "call_module" and len(node.args) == 1 and not node.kwargs:  # what lean_model left a module
            names[node] = _module(w, graph_module.get_submodule(node.target), name(node.args[0]))
        elif node.op == "output":
            output = name(node.args[0])
        else:
            raise Unsupported(f"{node.op} {node.target}")
    w.nodes.append(helper.make_node("Identity", [output], [OUTPUT]))
    graph = helper.make_graph(
        w.nodes, "cnnlab_lean", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, None)], initializer=w.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def session_for(lean: fx.GraphModule, input_shape: list[int], tolerance: float, threads: int):
    """(onnxruntime session of the lean graph, None) or (None, why not): checked on a probe batch
    against the lean graph's own logits within `tolerance` (relative to the logit scale)."""
    import onnxruntime

    try:
        model = onnx_model(lean, input_shape)
    except Unsupported as why:
        return None, f"not translated: {why}"
    except Exception as error:  # noqa: BLE001 - a graph of the user's own shaped unlike ours: never the caller's failure
        return None, f"not translated: {type(error).__name__}: {error}"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: a notebook cell is no place for its warnings
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        probe = torch.randint(0, 256, (2, *input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        x = to_input(probe, torch.float32)
        with torch.inference_mode():
            expected = lean(x).float()
        got = torch.from_numpy(session.run(None, {INPUT: x.contiguous().numpy()})[0])
    except Exception as error:  # noqa: BLE001 - onnxruntime refusing the graph: the lean copy stays
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    scale = max(1.0, expected.abs().max().item())
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance * scale):
        return None, "its logits differ from the lean model's on the probe batch"
    return session, None


def session_logits(session, images: torch.Tensor, tta: bool, translate: bool = False) -> torch.Tensor:
    """lean_logits through the session: with tta the mirror images (and shifted views) go in the same batch."""
    x = to_input(images, torch.float32)
    run = lambda batch: torch.from_numpy(session.run(None, {INPUT: batch.contiguous().numpy()})[0])  # noqa: E731
    return test_time.batched(run, x, translate) if tta and x.dim() == 4 else run(x)
