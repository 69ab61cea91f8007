"""The network's structure, found by tracing, not by naming: which weights make, carry and read each unit.

Two tracers serve two purposes:

* :func:`trace_unit_groups` (autograd graph). One forward pass with hooks records the autograd graph around
  every MultiplicativeNoise. Walking it backwards from a noise layer's input through unit-preserving
  operations (activations, batch norm, pooling, dropout, reshapes) reaches the Linear/Conv that produces the
  units; walking backwards from every Linear/Conv input reaches the noise layers whose outputs it consumes.
  This is the approach of Torch-Pruning's DependencyGraph, reduced to what the criteria need: the L2
  baseline scores a unit by the norm of its producer's weights (the paper's L2 baseline, Tables 1-2), and the paper's
  parameter-compression metric removes a pruned unit's incoming row and, "when the shapes line up", its
  outgoing columns in the consumers (the paper's compression metric, as the released code's modules/layers.py computes it). It works on any model (functional weights such as the
  output projection inside nn.MultiheadAttention included, because the walk identifies weights by their
  autograd leaves), but it sees operations, not call sites, so it cannot rewrite a network.
* :func:`trace_structure` (torch.fx). A symbolic trace gives every call site of the forward — module calls,
  functions, tensor methods, residual additions, concatenations — with its arguments, and a shape
  propagation gives every tensor's shape. From them it builds the *structure groups*: sets of units that
  share one index (the output channels of a Linear/Conv, carried through batch norm, activations, pooling,
  depthwise convolutions and flattening, merged by residual additions into one group per residual stream,
  and laid side by side by concatenations). bmrs.nn.attach inserts noise layers at chosen call sites of
  this graph and bmrs.nn.shrink narrows every module of a group at once. Operations it does not know mark
  the groups they touch as not removable (a *barrier*, with the module and op named).

:data:`OPS` is the one table of operations that keep the unit axis, with their properties (per-unit,
zero-preserving f(0) = 0, positively homogeneous f(s·x) = s·f(x) for s ≥ 0 — i.e. a per-unit scale s ≥ 0
such as E[θ]·mask commutes with them). Both tracers, the chain shrinker and the folding of noise layers into
weights read it.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from bmrs.nn.models import NoisyAttention, NoisyBatchNorm2d
from bmrs.nn.noise import MultiplicativeNoise, noise_layers


# ------------------------------------------------------------------------------------------------
# The one table of unit-preserving operations
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """An operation that keeps the unit axis, as modules, functions, tensor methods and autograd nodes.

    kind: "elementwise" (each value on its own: activations, dropout, identity, scaling by a number),
    "pool" (each channel over its spatial axes), "norm" (per-channel affine map with parameters: batch norm
    in eval mode), "layout" (reshapes: the unit axis is kept or merged with the trailing axes).
    zero_preserving: f(0) = 0, so a unit that is exactly zero stays zero through the op.
    homogeneous: f(s·x) = s·f(x) for every s ≥ 0 (a per-unit scale commutes with the op).
    identity_in_eval: the op is the identity in eval mode (dropout, Identity, copies).
    """

    name: str
    kind: str
    zero_preserving: bool
    homogeneous: bool
    modules: tuple[type, ...] = ()
    functions: tuple[Any, ...] = ()
    methods: tuple[str, ...] = ()
    autograd: tuple[str, ...] = ()
    identity_in_eval: bool = False


OPS: tuple[Op, ...] = (
    Op("relu", "elementwise", True, True, (nn.ReLU,), (F.relu, F.relu_, torch.relu, torch.relu_), ("relu", "relu_"),
       ("ReluBackward0", "ThresholdBackward0", "ThresholdBackward1")),
    Op("leaky_relu", "elementwise", True, True, (nn.LeakyReLU,), (F.leaky_relu, F.leaky_relu_), (),
       ("LeakyReluBackward0",)),
    Op("tanh", "elementwise", True, False, (nn.Tanh,), (torch.tanh, F.tanh), ("tanh",), ("TanhBackward0",)),
    Op("sigmoid", "elementwise", False, False, (nn.Sigmoid,), (torch.sigmoid, F.sigmoid), ("sigmoid",),
       ("SigmoidBackward0",)),
    Op("gelu", "elementwise", True, False, (nn.GELU,), (F.gelu,), (), ("GeluBackward0",)),
    Op("elu", "elementwise", True, False, (nn.ELU, nn.SELU, nn.CELU), (F.elu, F.elu_, F.selu, F.celu), (),
       ("EluBackward0",)),
    Op("silu", "elementwise", True, False, (nn.SiLU,), (F.silu,), (), ("SiluBackward0",)),
    Op("hardtanh", "elementwise", True, False, (nn.Hardtanh, nn.ReLU6), (F.hardtanh, F.hardtanh_, F.relu6), (),
       ("HardtanhBackward0",)),
    Op("hardswish", "elementwise", True, False, (nn.Hardswish,), (F.hardswish,), (), ("HardswishBackward0",)),
    Op("mish", "elementwise", True, False, (nn.Mish,), (F.mish,), (), ("MishBackward0",)),
    Op("softplus", "elementwise", False, False, (nn.Softplus,), (F.softplus,), (), ("SoftplusBackward0",)),
    Op("hardsigmoid", "elementwise", False, False, (nn.Hardsigmoid,), (F.hardsigmoid,), (),
       ("HardsigmoidBackward0",)),
    Op("dropout", "elementwise", True, True, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
       (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout), (),
       ("NativeDropoutBackward0", "DropoutBackward0"), identity_in_eval=True),
    Op("identity", "elementwise", True, True, (nn.Identity,), (), ("contiguous", "clone"),
       ("CloneBackward0", "ToCopyBackward0"), identity_in_eval=True),
    Op("scale", "elementwise", True, True, (), (operator.mul, torch.mul, operator.truediv, torch.div), ("mul", "div"),
       ("MulBackward0", "DivBackward0")),  # by a number (a tensor times a tensor is not unit-preserving)
    Op("batchnorm", "norm", False, False, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), (), (),
       ("NativeBatchNormBackward0", "CudnnBatchNormBackward0", "MkldnnBatchNormBackward0")),
    Op("max_pool", "pool", True, True,
       (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
       (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d),
       (), ("MaxPool2DWithIndicesBackward0", "MaxPool3DWithIndicesBackward0", "AdaptiveMaxPool2DBackward0")),
    Op("avg_pool", "pool", True, True,
       (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
       (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d),
       (), ("AvgPool2DBackward0", "AvgPool3DBackward0", "AdaptiveAvgPool2DBackward0", "AdaptiveAvgPool3DBackward0")),
    Op("flatten", "layout", True, True, (nn.Flatten,), (torch.flatten,), ("flatten",)),
    Op("reshape", "layout", True, True, (), (torch.reshape,), ("view", "reshape"),
       ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0")),
    Op("transpose", "layout", True, True, (), (), (), ("TransposeBackward0", "PermuteBackward0", "ExpandBackward0")),
)

#: Module classes that act on each unit separately (activations, dropout, identity, pooling).
UNITWISE_MODULES: tuple[type, ...] = tuple(c for op in OPS if op.kind in ("elementwise", "pool") for c in op.modules)
#: Module classes with which a per-unit scale s >= 0 commutes (f(s x) = s f(x)), flattening included.
HOMOGENEOUS_MODULES: tuple[type, ...] = tuple(c for op in OPS if op.homogeneous for c in op.modules)

# Autograd nodes the walks of trace_unit_groups pass through (their first tensor input).
_PASS_THROUGH = frozenset(n for op in OPS for n in op.autograd)
_WEIGHT_OPS = {"ConvolutionBackward0", "AddmmBackward0", "MmBackward0", "LinearBackward0", "BmmBackward0"}


@dataclass
class UnitGroup:
    """The units of one noise layer and the weights around them.

    producer_weight: the weight whose output rows (axis 0) create the units (Linear/Conv weight).
    producer_name: its qualified parameter name in the model.
    consumers: (parameter name, weight, block) for each Linear/Conv weight that reads the units
        directly (through unit-preserving ops); unit i owns input columns [i·block, (i+1)·block) —
        block > 1 where a conv output is flattened before a Linear layer.
    """

    name: str
    layer: MultiplicativeNoise
    producer_name: str | None = None
    producer_weight: nn.Parameter | None = None
    consumers: list[tuple[str, nn.Parameter, int]] = field(default_factory=list)


def _leaf_weight(node, units: int | None) -> Tensor | None:
    """The 2-D/4-D parameter among a weight op's inputs (looking through transposes)."""
    stack = list(node.next_functions)
    while stack:
        fn, _ = stack.pop()
        if fn is None:
            continue
        name = type(fn).__name__
        if name == "AccumulateGrad":
            var = fn.variable
            if var.dim() >= 2 and (units is None or var.shape[0] == units):
                return var
        elif name in ("TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0"):
            stack.extend(fn.next_functions)
    return None


def _walk_back(start, visit, pass_through: set[str]):
    """Breadth-first walk from an autograd node through `pass_through` ops (their first input only).

    `visit(node)` returns a result to stop with, or None to continue; nodes it returns False for are
    not expanded."""
    frontier, seen = [start], set()
    while frontier:
        node = frontier.pop(0)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        found = visit(node)
        if found is False:
            continue
        if found is not None:
            return found
        if type(node).__name__ in pass_through:
            frontier.extend(fn for fn, _ in node.next_functions[:1])
    return None


def _walk_to_weight(start, units: int) -> Tensor | None:
    """From a noise layer's input back to the first weight op producing `units` outputs."""

    def visit(node):
        if type(node).__name__ in _WEIGHT_OPS:
            weight = _leaf_weight(node, units)
            return weight if weight is not None else False
        return None

    return _walk_back(start, visit, _PASS_THROUGH)


def _walk_to_noise(start, outputs: dict[int, str]) -> str | None:
    """From a layer's input node back through unit-preserving ops to a noise layer's output node."""
    return _walk_back(start, lambda node: outputs.get(id(node)), _PASS_THROUGH - set(_op("scale").autograd))


def example_input_for(model: nn.Module, example_input: Tensor | None) -> Tensor:
    if example_input is not None:
        return example_input
    make = getattr(model, "example_input", None)
    if callable(make):
        return make()
    raise ValueError(
        f"{type(model).__name__} has no example_input() method; pass example_input=<a batch the model accepts> "
        "so the layers around each noise layer can be traced"
    )


def trace_unit_groups(model: nn.Module, example_input: Tensor | None = None) -> list[UnitGroup]:
    """Trace model once and return a UnitGroup per noise layer (in registration order).

    The model runs in eval mode under a fresh autograd graph; its mode and parameters are unchanged.
    """
    layers = list(noise_layers(model))
    if not layers:
        return []
    x = example_input_for(model, example_input)
    param_names = {id(p): n for n, p in model.named_parameters()}
    noise_inputs: dict[str, Tensor] = {}
    noise_outputs: dict[int, str] = {}
    consumer_inputs: list[tuple[nn.Module, Tensor]] = []
    hooks = []
    for name, layer in layers:
        def hook(mod, inp, out, name=name):
            noise_inputs[name] = inp[0]
            if out.grad_fn is not None:
                noise_outputs[id(out.grad_fn)] = name
        hooks.append(layer.register_forward_hook(hook))
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(mod.register_forward_hook(lambda m, inp, out: consumer_inputs.append((m, inp[0]))))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            model(x.to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    groups = {name: UnitGroup(name=name, layer=layer) for name, layer in layers}
    for name, layer in layers:
        inp = noise_inputs.get(name)
        if inp is None or inp.grad_fn is None:
            continue
        weight = _walk_to_weight(inp.grad_fn, layer.num_units)
        if weight is not None and id(weight) in param_names:
            groups[name].producer_weight = weight
            groups[name].producer_name = param_names[id(weight)]
    for mod, inp in consumer_inputs:
        if inp.grad_fn is None:
            continue
        source = _walk_to_noise(inp.grad_fn, noise_outputs)
        if source is None:
            continue
        units = groups[source].layer.num_units
        in_features = mod.weight.shape[1]
        if in_features % units:
            continue
        groups[source].consumers.append((param_names[id(mod.weight)], mod.weight, in_features // units))
    return [groups[name] for name, _ in layers]


# ------------------------------------------------------------------------------------------------
# torch.fx: the structure groups of any traceable network
# ------------------------------------------------------------------------------------------------

_BY_NAME = {op.name: op for op in OPS}
_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ADD = (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub)
_ADD_METHODS = ("add", "add_", "sub", "sub_")
_CAT = (torch.cat, torch.concat, torch.concatenate)
_MEAN = (torch.mean,)


def _op(name: str) -> Op:
    return _BY_NAME[name]


def module_op(module: nn.Module) -> Op | None:
    """The table entry of a module (None for anything else, producers and noise layers included)."""
    if isinstance(module, (MultiplicativeNoise, NoisyBatchNorm2d, NoisyAttention)):
        return None
    for op in OPS:
        if op.modules and isinstance(module, op.modules):
            return op
    return None


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps the noise layers (and any class in `leaves`) as opaque calls."""

    def __init__(self, leaves: Iterable[type] = ()) -> None:
        super().__init__()
        self.leaves = tuple(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (MultiplicativeNoise, NoisyBatchNorm2d, NoisyAttention)) or (self.leaves and isinstance(m, self.leaves)):
            return True
        return super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module, leaves: Iterable[type] = (), *, what: str = "bmrs") -> fx.Graph:
    """model's forward as a torch.fx graph (noise layers and `leaves` kept whole); one clear error otherwise."""
    try:
        return _Tracer(leaves).trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ... for untraceable code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{what} traces {type(model).__name__}.forward with torch.fx and could not ({type(exc).__name__}: {first}); "
            "pass the submodule class whose forward does this as a leaf (leaves=(ThatClass,)): a leaf is kept whole "
            "and its units are not pruned") from exc


def where(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A readable name of a call site: the module (type and name) or the function/method and its module."""
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} '{node.target}'"
    stack = node.meta.get("nn_module_stack") or {}
    inside = f"'{next(reversed(stack))}'" if stack else "the model's forward"
    if node.op == "call_method":
        return f"Tensor.{node.target}() in {inside}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name}() in {inside}"


class _NamedShapeProp(ShapeProp):
    """ShapeProp whose errors name the call site that failed."""

    def __init__(self, gm: fx.GraphModule, modules: dict[str, nn.Module]) -> None:
        super().__init__(gm)
        self._names = modules

    def run_node(self, n: fx.Node):
        try:
            return super().run_node(n)
        except Exception as exc:
            if getattr(exc, "bmrs_site", None):
                raise
            exc.bmrs_site = where(n, self._names)  # type: ignore[attr-defined]
            raise


def shape_propagate(graph: fx.Graph, model: nn.Module, example_input: Tensor, *, what: str = "bmrs") -> fx.GraphModule:
    """A GraphModule sharing model's modules, with node.meta['tensor_meta'] from one eval-mode forward on
    example_input (no gradients; model's mode is restored)."""
    gm = graph.owning_module if isinstance(model, fx.GraphModule) and graph is model.graph else fx.GraphModule(model, graph)
    modules = dict(model.named_modules())
    param = next(iter(model.parameters()), None)
    if not isinstance(example_input, Tensor):
        raise ValueError(f"{what} needs example_input=<a batch the model accepts, a torch.Tensor>; got "
                         f"{type(example_input).__name__}")
    x = example_input.to(param.device) if param is not None else example_input
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _NamedShapeProp(gm, modules).propagate(x)
    except Exception as exc:
        site = getattr(exc, "bmrs_site", "the forward")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{what} ran {type(model).__name__} on an example input of shape {tuple(example_input.shape)} and it failed "
            f"in {site} ({first}); pass example_input=<a batch the model accepts>") from exc
    finally:
        model.train(was_training)
    return gm


@dataclass(frozen=True)
class Seg:
    """A run of a tensor's unit axis: `width` units of structure group `space` (None: not a structure, e.g.
    the input image), each owning `block` consecutive entries (block > 1 after flattening C×H×W)."""

    space: int | None
    width: int
    block: int = 1

    @property
    def length(self) -> int:
        return self.width * self.block


@dataclass
class StructureGroup:
    """Units that share one index and are kept or removed together (bmrs.nn.shrink).

    producers: Linear/Conv modules whose output rows make the units (several for a residual stream);
    channelwise: BatchNorm and depthwise-conv modules that carry them channel by channel;
    consumers: Linear/Conv modules whose input columns read them; noise: noise layers on them;
    barriers: why they cannot be removed (an operation that cannot be narrowed, the network's output)."""

    index: int
    width: int
    producers: list[str] = field(default_factory=list)
    channelwise: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    noise: list[str] = field(default_factory=list)
    barriers: list[str] = field(default_factory=list)

    @property
    def residual(self) -> bool:
        """True for a residual stream: several producers whose outputs are added."""
        return len(self.producers) > 1

    @property
    def prunable(self) -> bool:
        return not self.barriers


@dataclass
class Structure:
    """What :func:`trace_structure` found. `layout[node name]` = (axis, segments) for every tensor that
    carries units; `flow` is the program bmrs.nn.shrink runs to know which units are exactly zero where."""

    graph: fx.Graph
    modules: dict[str, nn.Module]
    groups: list[StructureGroup]
    layout: dict[str, tuple[int, tuple[Seg, ...]]]
    flow: list[tuple]
    producer_nodes: dict[str, fx.Node]
    consumer_inputs: dict[str, fx.Node]
    channelwise_inputs: dict[str, tuple[fx.Node, str]]
    noise_nodes: dict[str, fx.Node]
    bad_noise: dict[str, str]
    skipped: dict[str, str]
    calls: Counter
    kinds: dict[str, str] = field(default_factory=dict)
    src_of: dict[str, str] = field(default_factory=dict)
    homogeneous: set[str] = field(default_factory=set)
    identity: set[str] = field(default_factory=set)

    def group_of_producer(self, name: str) -> StructureGroup:
        node = self.producer_nodes[name]
        return self.groups[self.layout[node.name][1][0].space]

    def group_of_noise(self, name: str) -> StructureGroup | None:
        node = self.noise_nodes[name]
        lay = self.layout.get(node.name)
        return self.groups[lay[1][0].space] if lay and lay[1][0].space is not None else None

    def node(self, name: str) -> fx.Node:
        return next(n for n in self.graph.nodes if n.name == name)


def _tensor_meta(node: Any):
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return meta if meta is not None and hasattr(meta, "shape") else None


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(_tensor_meta(node).shape)


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n))
    return out


def _flat_ints(args: Any) -> list[int]:
    out: list[int] = []
    for a in args:
        if isinstance(a, (tuple, list)):
            out += _flat_ints(a)
        elif isinstance(a, int) and not isinstance(a, bool):
            out.append(a)
    return out


def _reshaped(in_shape: tuple[int, ...], out_shape: tuple[int, ...], axis: int) -> tuple[int, int] | None:
    """(new axis, block factor) when a reshape keeps the unit axis, possibly merged with the axes after it."""
    if out_shape == in_shape:
        return axis, 1
    if len(out_shape) <= axis or out_shape[:axis] != in_shape[:axis]:
        return None
    for j in range(axis + 1, len(in_shape) + 1):
        if out_shape[axis] == in_shape[axis] * math.prod(in_shape[axis + 1:j]) and out_shape[axis + 1:] == in_shape[j:]:
            return axis, math.prod(in_shape[axis + 1:j])
    return None


class _Spaces:
    """Union-find over structure groups."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.width: list[int] = []

    def new(self, width: int) -> int:
        self.parent.append(len(self.parent))
        self.width.append(int(width))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def trace_structure(model: nn.Module, example_input: Tensor | None = None, *, leaves: Iterable[type] = (),
                    what: str = "bmrs") -> Structure:
    """Trace model with torch.fx and find its structure groups (see the module docstring).

    Rules, call site by call site (everything else that touches units is a barrier naming the module and op):
    Linear/Conv (groups=1) read the units of their input along the feature/channel axis (consumers) and make
    a new group (producers); depthwise convolutions (groups = in = out channels) and BatchNorm carry a group
    channel by channel; the operations of :data:`OPS` keep it (flattening merges the trailing axes into
    blocks, reshapes that hard-code the size of the unit axis are barriers); residual additions merge the
    groups of their operands into one; concatenation along the unit axis lays groups side by side; the
    model's output is a barrier (its shape is fixed). Noise layers (MultiplicativeNoise, NoisyBatchNorm2d)
    sit on the group of their input.
    """
    x = example_input_for(model, example_input)
    graph = model.graph if isinstance(model, fx.GraphModule) else symbolic_trace(model, leaves, what=what)
    shape_propagate(graph, model, x, what=what)
    modules = dict(model.named_modules())
    spaces = _Spaces()
    barriers: dict[int, list[str]] = {}
    lay: dict[str, tuple[int, tuple[Seg, ...]]] = {}
    flow: list[tuple] = []
    producers: dict[str, fx.Node] = {}
    consumers: dict[str, fx.Node] = {}
    channelwise: dict[str, tuple[fx.Node, str]] = {}
    noise: dict[str, fx.Node] = {}
    bad_noise: dict[str, str] = {}
    skipped: dict[str, str] = {}
    calls: Counter = Counter()
    kinds: dict[str, str] = {}  # node name -> "producer", "dw", "bn", "noise", "noisybn", "cat", "add", or an Op name
    src_of: dict[str, str] = {}  # node name -> its unit-carrying input, for one-input ops
    homogeneous: set[str] = set()  # nodes a per-unit scale s >= 0 commutes with
    identity: set[str] = set()  # nodes that are the identity in eval mode

    def block(node: fx.Node, reason: str) -> None:
        if node.name in lay:
            for seg in lay[node.name][1]:
                if seg.space is not None:
                    barriers.setdefault(seg.space, []).append(reason)

    def same(node: fx.Node, src: fx.Node, kind: str) -> None:
        lay[node.name] = lay[src.name]
        src_of[node.name] = src.name
        flow.append((kind, node.name, [src.name]))

    def merge(node: fx.Node, srcs: list[fx.Node], site: str) -> None:
        """Operands whose units line up one to one (addition, concatenation along another axis)."""
        tracked = [s for s in srcs if s.name in lay]
        first = lay[tracked[0].name]
        ok = all(s.name in lay for s in srcs) and all(
            lay[s.name][0] == first[0] and [(g.width, g.block) for g in lay[s.name][1]] ==
            [(g.width, g.block) for g in first[1]] and _shape(s)[first[0]] == _shape(node)[first[0]] for s in srcs)
        if not ok:
            for s in tracked:
                block(s, f"{site} combines them with a tensor whose units do not line up")
            return
        for s in srcs[1:]:
            for a, b in zip(first[1], lay[s.name][1]):
                if (a.space is None) != (b.space is None):
                    for t in tracked:
                        block(t, f"{site} adds them to a tensor that is not a structure")
                    return
                if a.space is not None:
                    spaces.union(a.space, b.space)
        lay[node.name] = first
        kinds[node.name] = "add"
        flow.append(("and", node.name, [s.name for s in srcs]))

    for node in graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            continue
        ins = _flat_nodes((node.args, node.kwargs))
        tracked = [a for a in ins if a.name in lay]
        if node.op == "output":
            for a in tracked:
                block(a, "the network's output (its shape is fixed)")
            continue
        mod = modules.get(node.target) if node.op == "call_module" else None
        if mod is not None:
            calls[node.target] += 1
        if _tensor_meta(node) is None:  # sizes, shapes, asserts, tuples: nothing to track, but units must not leak
            metadata = (node.op == "call_function" and node.target is getattr) or \
                (node.op == "call_method" and node.target in ("size", "dim", "numel", "ndimension", "get_device"))
            if tracked and not metadata:
                for a in tracked:
                    block(a, f"{where(node, modules)} (its output is not a tensor)")
            continue
        site = where(node, modules)
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        src_lay = lay.get(src.name) if src is not None else None
        out_ndim = len(_shape(node))

        # --- modules --------------------------------------------------------------------------
        if isinstance(mod, MultiplicativeNoise):
            d = mod.dim % out_ndim
            if src_lay is None or src_lay[0] != d or len(src_lay[1]) != 1 or src_lay[1][0].block != 1 \
                    or src_lay[1][0].space is None or src_lay[1][0].width != mod.num_units:
                bad_noise[node.target] = (f"its input (axis {mod.dim} of shape {_shape(src) if src is not None else '?'}) "
                                          "is not the output units of one Linear/Conv layer group")
                if src_lay is not None:
                    block(src, f"the noise layer '{node.target}' (on something that is not one group's units)")
                continue
            noise[node.target] = node
            same(node, src, "noise")
            kinds[node.name] = "noise"
            homogeneous.add(node.name)
            continue
        if isinstance(mod, NoisyBatchNorm2d):
            if src_lay is None or src_lay[0] != 1 or any(g.block != 1 for g in src_lay[1]) or len(src_lay[1]) != 1:
                bad_noise[f"{node.target}.noise"] = "its BatchNorm does not read the channels of one group"
                if src_lay is not None:
                    block(src, f"{site} (noise on something that is not one group's channels)")
                continue
            channelwise[node.target] = (src, "bn")
            noise[f"{node.target}.noise"] = node
            lay[node.name] = src_lay
            src_of[node.name] = src.name
            kinds[node.name] = "noisybn"
            flow.append(("noise_fresh", node.name, [src.name]))
            continue
        if isinstance(mod, _PRODUCERS):
            is_linear = isinstance(mod, nn.Linear)
            groups = 1 if is_linear else mod.groups
            depthwise = not is_linear and groups > 1 and groups == mod.in_channels == mod.out_channels
            if depthwise:
                if src_lay is not None and src_lay[0] == 1 and all(g.block == 1 for g in src_lay[1]):
                    channelwise[node.target] = (src, "dw")
                    same(node, src, "same" if mod.bias is None else "live")
                    kinds[node.name] = "dw"
                elif src_lay is not None:
                    block(src, f"{site} reads them along another axis")
                continue
            if groups != 1:
                if src is not None:
                    block(src, f"{site} is a grouped convolution (groups={groups})")
                skipped[node.target] = f"grouped convolution (groups={groups}) is not pruned"
                continue
            axis = out_ndim - 1 if is_linear else 1
            if src_lay is not None:
                if src_lay[0] == (len(_shape(src)) - 1 if is_linear else 1):
                    consumers[node.target] = src
                else:
                    block(src, f"{site} reads them along another axis")
            width = mod.out_features if is_linear else mod.out_channels
            sp = spaces.new(width)
            producers[node.target] = node
            kinds[node.name] = "producer"
            if src is not None:
                src_of[node.name] = src.name
            lay[node.name] = (axis, (Seg(sp, width),))
            flow.append(("new", node.name, []))
            continue
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and module_op(mod) is not None:
            if src_lay is not None and src_lay[0] == 1 and all(g.block == 1 for g in src_lay[1]):
                channelwise[node.target] = (src, "bn")
                same(node, src, "live")
                kinds[node.name] = "bn"
            elif src_lay is not None:
                block(src, f"{site} normalises another axis")
            continue

        # --- the op table: modules, functions, methods --------------------------------------------
        op = module_op(mod) if mod is not None else None
        if op is None and node.op == "call_function":
            op = next((o for o in OPS if any(node.target is f for f in o.functions)), None)
        if op is None and node.op == "call_method":
            op = next((o for o in OPS if node.target in o.methods), None)
        if op is not None and op.name == "scale":
            tensors = [a for a in node.args if isinstance(a, fx.Node)]
            numbers = [a for a in node.args if isinstance(a, (int, float))]
            divides = node.target in (operator.truediv, torch.div, "div")
            if len(tensors) != 1 or len(numbers) != 1 or (divides and not isinstance(node.args[0], fx.Node)):
                op = None  # tensor × tensor (gating), number / tensor: not unit-preserving
            else:
                src, src_lay = tensors[0], lay.get(tensors[0].name)
        if op is not None and (src is None or src_lay is None):
            for a in tracked:
                block(a, site)
            continue
        if op is not None and op.kind != "layout":
            if any(a is not src for a in tracked):
                for a in tracked:
                    block(a, f"{site} combines them with other units")
                continue
            if op.kind == "pool" and src_lay[0] != 1:
                block(src, f"{site} pools along the unit axis")
                continue
            zero_in_range = not isinstance(mod, nn.Hardtanh) or mod.min_val <= 0.0 <= mod.max_val
            same(node, src, "same" if op.zero_preserving and zero_in_range else "live")
            kinds[node.name] = op.name
            positive = op.name != "scale" or all(a >= 0 for a in node.args if isinstance(a, (int, float)))
            if op.homogeneous and positive:
                homogeneous.add(node.name)
            if op.identity_in_eval:
                identity.add(node.name)
            continue
        if op is not None:  # layout: flatten, view, reshape
            axis, segs = src_lay
            moved = _reshaped(_shape(src), _shape(node), axis)
            if moved is None:
                block(src, f"{site} reshapes the unit axis")
                continue
            literal = [a for a in _flat_ints(node.args[1:]) if a != -1]
            size = _shape(node)[moved[0]]
            if op.name == "reshape" and size != 1 and size in literal:
                block(src, f"{site} hard-codes the size {size} of the unit axis "
                           "(write torch.flatten(x, 1) or x.view(x.size(0), -1))")
                continue
            new_axis, factor = moved
            lay[node.name] = (new_axis, tuple(Seg(g.space, g.width, g.block * factor) for g in segs))
            src_of[node.name] = src.name
            kinds[node.name] = "layout"
            homogeneous.add(node.name)
            flow.append(("same", node.name, [src.name]))
            continue

        # --- residual additions, concatenations, means ------------------------------------------
        if (node.op == "call_function" and node.target in _ADD) or (node.op == "call_method" and node.target in _ADD_METHODS):
            operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
            if not tracked:
                continue
            if len(operands) == 2 and _tensor_meta(operands[0]) is not None and _tensor_meta(operands[1]) is not None:
                if _shape(operands[0]) == _shape(operands[1]) == _shape(node):
                    merge(node, operands, site)
                else:
                    for a in tracked:
                        block(a, f"{site} broadcasts them")
                continue
            numbers = [a for a in node.args[:2] if isinstance(a, (int, float))]
            if len(operands) == 1 and len(numbers) == 1 and operands[0].name in lay and len(tracked) == 1:
                lay[node.name] = lay[operands[0].name]
                flow.append(("same" if numbers[0] == 0 else "live", node.name, [operands[0].name]))
                continue
            for a in tracked:
                block(a, f"{site} adds them to another tensor")
            continue
        if node.op == "call_function" and node.target in _CAT:
            if not tracked:
                continue
            parts = list(node.args[0]) if node.args else list(node.kwargs.get("tensors", ()))
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            dim %= out_ndim
            axes = {lay[p.name][0] for p in parts if p.name in lay}
            if len(axes) != 1:
                for a in tracked:
                    block(a, f"{site} concatenates tensors whose units lie on different axes")
                continue
            axis = axes.pop()
            if dim != axis:
                merge(node, parts, site)
                continue
            segs: list[Seg] = []
            for p in parts:
                segs += list(lay[p.name][1]) if p.name in lay else [Seg(None, _shape(p)[axis])]
            lay[node.name] = (axis, tuple(segs))
            kinds[node.name] = "cat"
            flow.append(("cat", node.name, [p.name for p in parts]))
            continue
        if (node.op == "call_function" and node.target in _MEAN) or (node.op == "call_method" and node.target == "mean"):
            if src_lay is None:
                continue
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            dims = (dims,) if isinstance(dims, int) else tuple(dims) if dims is not None else None
            axis = src_lay[0]
            in_ndim = len(_shape(src))
            if dims is None or axis in {d % in_ndim for d in dims}:
                block(src, f"{site} averages over the unit axis")
                continue
            new_axis = axis if keep else axis - sum(1 for d in dims if d % in_ndim < axis)
            lay[node.name] = (new_axis, src_lay[1])
            src_of[node.name] = src.name
            kinds[node.name] = "mean"
            homogeneous.add(node.name)
            flow.append(("same", node.name, [src.name]))
            continue

        for a in tracked:  # anything else that touches units
            block(a, site)

    groups: list[StructureGroup] = []
    index: dict[int, int] = {}
    for i in range(len(spaces.parent)):
        root = spaces.find(i)
        if root not in index:
            index[root] = len(groups)
            groups.append(StructureGroup(len(groups), spaces.width[root]))
        g = groups[index[root]]
        for reason in barriers.get(i, []):
            if reason not in g.barriers:
                g.barriers.append(reason)

    def renumber(segs: tuple[Seg, ...]) -> tuple[Seg, ...]:
        return tuple(Seg(None if s.space is None else index[spaces.find(s.space)], s.width, s.block) for s in segs)

    lay = {k: (a, renumber(s)) for k, (a, s) in lay.items()}
    for name, node in producers.items():
        groups[lay[node.name][1][0].space].producers.append(name)
    for name, (src, _) in channelwise.items():
        for s in {seg.space for seg in lay[src.name][1] if seg.space is not None}:
            groups[s].channelwise.append(name)
    for name, src in consumers.items():
        for s in dict.fromkeys(seg.space for seg in lay[src.name][1] if seg.space is not None):
            groups[s].consumers.append(name)
    for name, node in noise.items():
        groups[lay[node.name][1][0].space].noise.append(name)
    return Structure(graph, modules, groups, lay, flow, producers, consumers, channelwise, noise, bad_noise, skipped,
                     calls, kinds, src_of, homogeneous, identity)
