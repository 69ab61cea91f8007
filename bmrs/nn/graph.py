"""Which weights feed, and which layers consume, each noise layer — found by tracing, not by naming.

One forward pass with hooks records the autograd graph around every MultiplicativeNoise. Walking it
backwards from a noise layer's input through unit-preserving operations (activations, batch norm,
pooling, dropout, reshapes) reaches the Linear/Conv that produces the units; walking backwards from
every Linear/Conv input reaches the noise layers whose outputs it consumes. This is the approach of
Torch-Pruning's DependencyGraph, reduced to what BMRS needs:

* the L2 baseline scores a unit by the norm of its producer's weights (spec 3);
* the paper's parameter-compression metric removes a pruned unit's incoming row and, "when the shapes
  line up", its outgoing columns in the consumers (spec 4.6).

Functional weights (e.g. the output projection inside nn.MultiheadAttention, which never calls its
Linear module) are found too, because the walk identifies weights by their autograd leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bmrs.nn.noise import MultiplicativeNoise, noise_layers

# Autograd nodes that keep the unit axis intact (elementwise maps, per-channel normalisation,
# pooling, dropout, reshapes). The walk continues through their first tensor input.
_PASS_THROUGH = {
    "ReluBackward0", "TanhBackward0", "GeluBackward0", "SigmoidBackward0", "EluBackward0", "SiluBackward0",
    "LeakyReluBackward0", "HardtanhBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0",
    "MkldnnBatchNormBackward0", "MaxPool2DWithIndicesBackward0", "AvgPool2DBackward0", "AdaptiveAvgPool2DBackward0",
    "NativeDropoutBackward0", "DropoutBackward0", "CloneBackward0", "ViewBackward0", "UnsafeViewBackward0",
    "ReshapeAliasBackward0", "TransposeBackward0", "PermuteBackward0", "ToCopyBackward0", "ExpandBackward0",
    "ThresholdBackward0", "ThresholdBackward1", "MulBackward0", "DivBackward0",
}
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
    return _walk_back(start, lambda node: outputs.get(id(node)), _PASS_THROUGH - {"MulBackward0", "DivBackward0"})


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
