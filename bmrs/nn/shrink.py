"""Turn a masked BMRS network into a physically smaller dense network, and measure what that buys.

:func:`shrink` returns a new network without noise layers whose eval-mode outputs equal those of the
masked network, in which every unit's output is multiplied by s = E_q[θ] · mask (float64, cast to the
model's dtype; s = 0 for a pruned unit, s > 0 otherwise). The noise layer is folded into a neighbouring
linear map and the pruned units are deleted:

* **Linear/Conv chains** (``bmrs.nn.models.mlp`` / ``lenet5``; noise after Tanh/ReLU). For a producer
  h = f(W₁x + b₁) followed by noise and a consumer y = W₂ g(s ⊙ h) + b₂, where g is a chain of ops that
  commute with a per-unit scale s ≥ 0 (max-pooling, average pooling, ReLU, flattening, dropout in eval):
  y = (W₂ diag(s)) g(h) + b₂. s is folded into the consumer's input columns (a flattened conv channel
  owns a block of H·W columns); a unit with s = 0 contributes nothing, so its producer row/filter and
  bias entry and its consumer columns are deleted.
  *Whole layer pruned:* the consumer then computes y = W₂·0 + b₂ = b₂ for every input, so everything up
  to and including the consumer is dead. It is replaced by :class:`ConstantFeatures` holding b₂ (the
  consumer's bias restricted to its own kept units, broadcast over the traced spatial shape); the rest
  of the network is shrunk as usual. (Only the last fully pruned layer matters.)
* **ResNet-18/50** (noise after every BatchNorm2d, before the ReLU). In eval mode
  s ⊙ BN(x) = (s γ) x̂ + (s β) with x̂ = (x − running_mean)/√(running_var + eps): s is folded into the
  BN's γ and β, running statistics are unchanged. Channels fall into groups (see :func:`resnet_groups`):

  - *single* groups: one BN whose channels are read by convolutions only — block-internal channels
    (bn1 of a BasicBlock, bn1/bn2 of a Bottleneck) and, for ResNet-50, the stem BN (layer1.0 has a
    downsample branch). A pruned channel is removed from the producing conv (filter), the BN, and the
    consuming convs' input channels.
  - *residual* groups: the channels of one residual stream, i.e. the tensors added by the skip
    connections of one stage. Members: the downsample BN that starts the stage (or the stem BN for
    layer1 of ResNet-18, whose shortcut is the identity) and the last BN of every block of the stage
    (bn2 of a BasicBlock, bn3 of a Bottleneck). Consumers: every block's conv1 in the stage, the next
    stage's conv1 and downsample conv, or the fc layer after global average pooling. A channel is
    physically removed only when every member prunes it — then the stream carries relu(0 + 0) = 0 in it
    everywhere. A channel pruned by only some members stays; those members' contributions are exactly
    zero through the folded s = 0 (γ' = β' = 0).

  Torch convolutions cannot have zero channels, so a group whose every channel is pruned keeps one
  placeholder channel (its first) with γ' = β' = 0: it carries exact zeros, as in the masked network.
* **ViT** (noise on the attention output and on the MLP output, before each residual add). With
  r = x + s ⊙ (W h + b) = x + (diag(s) W) h + s ⊙ b, s is folded into the rows and bias of the
  attention's out_proj and of the MLP's second Linear; rows with s = 0 are deleted and the kept
  features are added back into the residual stream by :class:`IndexAdd` (index_add on the feature
  axis). A branch with no kept feature is removed entirely (its LayerNorm, attention/MLP and
  projection weights).

* **Any other traced network** (what bmrs.attach_noise returns, or any module with MultiplicativeNoise or
  NoisyBatchNorm2d placed by hand: nn.Sequential, custom forwards, torchvision ResNet/VGG/MobileNetV2).
  bmrs.nn.graph.trace_structure gives the structure groups: units sharing one index from their Linear/Conv
  producers through BatchNorm, activations, pooling, dropout, depthwise convs and flattening to the
  Linear/Conv consumers, merged by residual additions, laid side by side by concatenations. Each noise layer's
  scale is folded by the rules of :func:`plan_folds` (into the previous Linear/Conv/BatchNorm, else into its
  consumers' columns through ops that commute with s >= 0). Which units to remove follows from exact zeros:
  a unit is zero after a noise layer with s = 0, stays zero through zero-preserving ops (ReLU, pooling,
  flattening, a bias-free depthwise conv; not through BatchNorm's shift or a sigmoid), and a sum is zero where
  all its operands are. A unit of a group is removed — producer rows, BatchNorm entries, depthwise channels,
  consumer columns — when it is zero at every consumer: for a residual stream, when every member prunes it;
  through a depthwise conv, when the noise nearest the consumer does. A group with no unit left keeps one
  (exactly zero) placeholder. The result is a deep copy of the model (same class and module names; a
  GraphModule loses its noise nodes); an operation that cannot be narrowed, a noise layer that cannot be
  folded or a module called twice ends in one error naming the module and the op.
  *Why our own graph rather than Torch-Pruning's DependencyGraph:* the index surgery is the easy part; what
  BMRS needs around it is not in Torch-Pruning: folding E[θ]·mask exactly, the noise layer as a graph node,
  "remove only what is exactly zero at every consumer" (a residual channel pruned by some members only stays;
  a fully pruned group keeps a zero placeholder where Torch-Pruning refuses to prune everything), the ViT's
  per-branch row deletion, and no new dependency. torch.fx gives the call sites and shapes; bmrs.nn.graph
  and this section do the rest.

bmrs's own networks are described by a JSON-able architecture dict (family, layer sizes, kept unit
indices) and built from it by the same code that :func:`load_compact` uses, so the save/load round
trip rebuilds exactly the module that :func:`shrink` returned.

Measurement conventions: parameters are ``numel`` of ``model.parameters()``; MACs are
``FlopCounterMode`` FLOPs / 2 (it counts 2 FLOPs per multiply-add of matmul, conv and attention);
elementwise ops (activations, BN, noise, residual adds) are not counted. Latency is wall time of one
eval-mode forward under ``torch.inference_mode`` (median and inter-quartile range over repeats) with a
stated thread count.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from bmrs.nn.graph import (HOMOGENEOUS_MODULES, UNITWISE_MODULES, Seg, Structure, _flat_nodes, example_input_for,
                           trace_structure, where)
from bmrs.nn.models import Classifier, InputSpec, NoisyAttention, NoisyBatchNorm2d, TorchvisionClassifier
from bmrs.nn.noise import MultiplicativeNoise, noise_layers, unmasked
from bmrs.util.atomic import atomic_path, write_json

FORMAT_VERSION = 1
SUPPORTED = ("any network bmrs.attach_noise accepts (traced with torch.fx: Linear/Conv, BatchNorm, activations, "
             "pooling, flattening, dropout, residual additions, concatenation), and bmrs's own "
             "bmrs.nn.models.mlp and bmrs.nn.models.lenet5 (a Classifier chain of Linear/Conv2d layers with noise after "
             "the activation), bmrs.nn.models.resnet (torchvision ResNet-18/50 with NoisyBatchNorm2d) and "
             "bmrs.nn.models.vit (torchvision VisionTransformer with NoisyAttention and MLP noise)")

StateDict = dict[str, Tensor]


# ------------------------------------------------------------------------------------------------
# Modules used by shrunk networks
# ------------------------------------------------------------------------------------------------

class ConstantFeatures(nn.Module):
    """Replaces a dead prefix of a network: returns `bias` (one value per channel) broadcast to
    (batch, channels, *spatial), whatever the input. `bias` is the bias of the layer whose whole
    input was pruned (W·0 + b = b)."""

    def __init__(self, channels: int, spatial: Iterable[int] = ()) -> None:
        super().__init__()
        self.spatial = tuple(int(v) for v in spatial)
        self.bias = nn.Parameter(torch.zeros(int(channels)))

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}, spatial={self.spatial}"

    def forward(self, x: Tensor) -> Tensor:
        view = self.bias.view(1, -1, *([1] * len(self.spatial)))
        return view.expand(x.shape[0], -1, *self.spatial).contiguous()


class IndexAdd(nn.Module):
    """residual + update scattered to the kept feature indices (last axis): residual.index_add(-1, index, update)."""

    def __init__(self, kept: list[int], width: int) -> None:
        super().__init__()
        self.width = int(width)
        self.full = list(kept) == list(range(self.width))
        self.register_buffer("index", torch.tensor(list(kept), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"{self.index.numel()} of {self.width}"

    def forward(self, residual: Tensor, update: Tensor) -> Tensor:
        if self.full:
            return residual + update
        return residual.index_add(-1, self.index, update)


class PrunedSelfAttention(nn.Module):
    """Multi-head self-attention (batch first) whose output projection keeps only `out_features` rows."""

    def __init__(self, embed_dim: int, num_heads: int, out_features: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout = int(embed_dim), int(num_heads), float(dropout)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, out_features)

    def forward(self, x: Tensor) -> Tensor:
        n, t, e = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(n, t, 3, self.num_heads, e // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(n, t, e))


class PrunedEncoderBlock(nn.Module):
    """A torchvision ViT EncoderBlock whose attention and MLP outputs keep only some features:
    x ← x + scatter(attention(ln_1(x))); x ← x + scatter(mlp(ln_2(x))). A branch with no kept feature is absent."""

    def __init__(self, hidden_dim: int, num_heads: int, mlp_dim: int, attention_kept: list[int], mlp_kept: list[int],
                 dropout: float = 0.0, attention_dropout: float = 0.0, ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = self.self_attention = self.ln_2 = self.mlp = None
        if attention_kept:
            self.ln_1 = nn.LayerNorm(hidden_dim, eps=ln_eps)
            self.self_attention = PrunedSelfAttention(hidden_dim, num_heads, len(attention_kept), attention_dropout)
        self.dropout = nn.Dropout(dropout)
        self.attention_add = IndexAdd(attention_kept, hidden_dim)
        if mlp_kept:
            self.ln_2 = nn.LayerNorm(hidden_dim, eps=ln_eps)
            self.mlp = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(mlp_dim, len(mlp_kept)), nn.Dropout(dropout))
        self.mlp_add = IndexAdd(mlp_kept, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.self_attention is not None:
            x = self.attention_add(x, self.dropout(self.self_attention(self.ln_1(x))))
        if self.mlp is not None:
            x = self.mlp_add(x, self.mlp(self.ln_2(x)))
        return x


# ------------------------------------------------------------------------------------------------
# Per-unit scales
# ------------------------------------------------------------------------------------------------

def unit_scale(layer: MultiplicativeNoise | None, units: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(s, kept): s = E_q[θ] · mask per unit in float64 (ones without a noise layer) and the indices of the
    units with mask ≠ 0, both on `device`."""
    if layer is None:
        return torch.ones(units, dtype=torch.float64, device=device), torch.arange(units, device=device)
    if layer.num_units != units:
        raise ValueError(f"a noise layer has {layer.num_units} units but the layer producing them has {units}")
    mask = layer.mask.detach().to(device)
    return layer.expected_theta().to(device) * mask.double(), torch.nonzero(mask != 0).flatten()


def _scaled(t: Tensor, s: Tensor, dim: int) -> Tensor:
    """t · s along axis dim, computed in float64 and returned in t's dtype."""
    shape = [1] * t.dim()
    shape[dim] = -1
    return (t.detach().double() * s.to(t.device).view(shape)).to(t.dtype)


def _index(kept: Tensor) -> list[int]:
    return [int(v) for v in kept.tolist()]


def noise_param_count(model: nn.Module) -> int:
    return sum(layer.mu.numel() + layer.log_sigma.numel() for _, layer in noise_layers(model))


# ------------------------------------------------------------------------------------------------
# Linear/Conv chains (MLP, LeNet5)
# ------------------------------------------------------------------------------------------------

# Ops allowed between a producer and its noise layer (act on each unit separately) and between a noise
# layer and the consumer (also commute with a per-unit scale s >= 0): bmrs.nn.graph.OPS.
_UNITWISE = UNITWISE_MODULES
_HOMOGENEOUS = HOMOGENEOUS_MODULES


def _layer_spec(m: nn.Module) -> dict[str, Any]:
    """JSON description of a layer of a Linear/Conv chain (sizes only; weights go to the state_dict)."""
    if isinstance(m, nn.Linear):
        return {"type": "linear", "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros":
            raise ValueError(f"shrink supports Conv2d with groups=1 and zero padding only; got {m}")
        return {"type": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                "dilation": list(m.dilation), "bias": m.bias is not None}
    if isinstance(m, ConstantFeatures):
        return {"type": "constant", "channels": m.bias.numel(), "spatial": list(m.spatial)}
    simple = {nn.ReLU: ("relu", ["inplace"]), nn.Tanh: ("tanh", []), nn.Sigmoid: ("sigmoid", []),
              nn.GELU: ("gelu", ["approximate"]), nn.LeakyReLU: ("leaky_relu", ["negative_slope", "inplace"]),
              nn.ELU: ("elu", ["alpha", "inplace"]), nn.Dropout: ("dropout", ["p"]), nn.Identity: ("identity", []),
              nn.MaxPool2d: ("maxpool2d", ["kernel_size", "stride", "padding", "dilation", "ceil_mode"]),
              nn.AvgPool2d: ("avgpool2d", ["kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                                           "divisor_override"]),
              nn.Flatten: ("flatten", ["start_dim", "end_dim"])}
    if type(m) not in simple:
        raise ValueError(f"shrink cannot handle a {type(m).__name__} layer in a Linear/Conv chain; supported: "
                         f"{', '.join(sorted(c.__name__ for c in simple))}, Linear, Conv2d, MultiplicativeNoise")
    kind, attrs = simple[type(m)]
    spec: dict[str, Any] = {"type": kind}
    for a in attrs:
        v = getattr(m, a)
        spec[a] = list(v) if isinstance(v, tuple) else v
    return spec


def _layer_from_spec(spec: dict[str, Any]) -> nn.Module:
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    builders: dict[str, Callable[..., nn.Module]] = {
        "linear": nn.Linear, "conv2d": nn.Conv2d, "constant": ConstantFeatures, "relu": nn.ReLU, "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "dropout": nn.Dropout,
        "identity": nn.Identity, "maxpool2d": nn.MaxPool2d, "avgpool2d": nn.AvgPool2d, "flatten": nn.Flatten,
    }
    if kind not in builders:
        raise ValueError(f"unknown layer type {kind!r} in architecture.json")
    return builders[kind](**kw)


@dataclass
class _Stage:
    """A producer (Linear/Conv2d) and the layers up to the next producer, with its optional noise layer."""

    index: int
    producer: nn.Module
    tail: list[int]
    noise: int | None = None
    s: Tensor | None = None
    kept: Tensor | None = None

    @property
    def units(self) -> int:
        p = self.producer
        return p.out_features if isinstance(p, nn.Linear) else p.out_channels


def _trace_shapes(model: Classifier) -> list[tuple[int, ...]]:
    """Output shape (without the batch axis) of every layer for one example input."""
    shapes: list[tuple[int, ...]] = []
    device = next(model.parameters()).device
    x = model.example_input(1).to(device=device, dtype=next(model.parameters()).dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for layer in model:
                x = layer(x)
                shapes.append(tuple(x.shape[1:]))
    finally:
        model.train(was_training)
    return shapes


def _chain_stages(model: Classifier) -> tuple[list[_Stage], list[tuple[int, ...]]]:
    """The producer stages of a Linear/Conv chain (validated) and every layer's traced output shape."""
    layers = list(model)
    producers = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not producers:
        raise ValueError("shrink found no Linear/Conv2d layer in the Classifier")
    for m in layers[:producers[0]]:
        if not isinstance(m, (nn.Flatten, nn.Identity, nn.Dropout)):
            raise ValueError(f"shrink cannot handle {type(m).__name__} before the first Linear/Conv2d layer")
    device = next(model.parameters()).device
    shapes = _trace_shapes(model)
    stages = []
    for j, p in enumerate(producers):
        end = producers[j + 1] if j + 1 < len(producers) else len(layers)
        stage = _Stage(p, layers[p], list(range(p + 1, end)))
        _layer_spec(stage.producer)  # validates conv options
        noise_at = [i for i in stage.tail if isinstance(layers[i], MultiplicativeNoise)]
        if len(noise_at) > 1:
            raise ValueError(f"layers {noise_at} are two noise layers on the units of layer {p}; expected at most one")
        if noise_at:
            stage.noise = noise_at[0]
            if j + 1 == len(producers):
                raise ValueError("shrink needs a Linear/Conv2d after every noise layer (the head is never pruned); "
                                 f"noise layer {stage.noise} follows the last one")
            ndim = len(shapes[stage.noise]) + 1
            if layers[stage.noise].dim % ndim != 1:
                raise ValueError(f"noise layer {stage.noise} has dim={layers[stage.noise].dim}; expected the unit axis 1")
            for i in stage.tail:
                allowed = _UNITWISE if i < stage.noise else _HOMOGENEOUS
                if i != stage.noise and not isinstance(layers[i], allowed):
                    where = "between a Linear/Conv2d and its noise layer" if i < stage.noise else \
                        "between a noise layer and the next Linear/Conv2d (the scale must commute with it)"
                    raise ValueError(f"shrink cannot fold through {type(layers[i]).__name__} (layer {i}) {where}")
        for i in stage.tail:
            if i != stage.noise:
                _layer_spec(layers[i])  # validates the type
        noise = layers[stage.noise] if stage.noise is not None else None
        stage.s, stage.kept = unit_scale(noise, stage.units, device)
        stages.append(stage)
    return stages, shapes


def _input_columns(stage: _Stage, prev: _Stage) -> tuple[Tensor, Tensor]:
    """Kept input columns of stage's producer and the scale of each, from the previous stage's units.
    Unit i of the previous stage owns columns [i·block, (i+1)·block) (block = H·W after a Flatten)."""
    p = stage.producer
    width = p.in_features if isinstance(p, nn.Linear) else p.in_channels
    if width % prev.units:
        raise ValueError(f"layer {stage.index} has {width} inputs, not a multiple of the {prev.units} units of "
                         f"layer {prev.index}")
    block = width // prev.units
    if isinstance(p, nn.Conv2d) and block != 1:
        raise ValueError(f"conv layer {stage.index} reads {width} channels but layer {prev.index} makes {prev.units}")
    offsets = torch.arange(block, device=prev.kept.device)
    cols = (prev.kept.view(-1, 1) * block + offsets).flatten()
    return cols, prev.s.repeat_interleave(block)[cols]


def _shrink_producer(stage: _Stage, prev: _Stage | None, rows: Tensor) -> tuple[dict[str, Any], StateDict]:
    """W' = (W diag(s_in))[rows, kept columns], b' = b[rows]: the new layer's spec and tensors."""
    p = stage.producer
    w = p.weight.detach()
    if prev is not None:
        cols, s_cols = _input_columns(stage, prev)
        w = _scaled(w[:, cols], s_cols, 1)
    w = w[rows].clone()
    spec = _layer_spec(p)
    if isinstance(p, nn.Linear):
        spec.update(in_features=w.shape[1], out_features=w.shape[0])
    else:
        spec.update(in_channels=w.shape[1], out_channels=w.shape[0])
    state = {"weight": w}
    if p.bias is not None:
        state["bias"] = p.bias.detach()[rows].clone()
    return spec, state


def _plan_chain(model: Classifier) -> tuple[dict[str, Any], StateDict]:
    layers = list(model)
    stages, shapes = _chain_stages(model)
    dead = [j for j, st in enumerate(stages) if st.kept.numel() == 0]
    start = dead[-1] + 1 if dead else 0  # stages[start] is the first live producer (a constant if dead)
    specs: list[dict[str, Any]] = []
    state: StateDict = {}
    units: list[dict[str, Any]] = []

    def add(spec: dict[str, Any], tensors: StateDict) -> None:
        for k, v in tensors.items():
            state[f"{len(specs)}.{k}"] = v
        specs.append(spec)

    if not dead:
        for i in range(stages[0].index):
            add(_layer_spec(layers[i]), {})
    for j, st in enumerate(stages):
        if j < start:
            if st.noise is not None:
                units.append({"noise": str(st.noise), "producer": st.index, "units": st.units,
                              "kept": _index(st.kept), "layer": None})
            continue
        rows = st.kept if j + 1 < len(stages) else torch.arange(st.units, device=st.kept.device)
        if j == start and dead:
            shape = shapes[st.index]
            bias = st.producer.bias.detach()[rows].clone() if st.producer.bias is not None else \
                torch.zeros(rows.numel(), dtype=st.producer.weight.dtype, device=rows.device)
            add({"type": "constant", "channels": rows.numel(), "spatial": list(shape[1:])}, {"bias": bias})
        else:
            add(*_shrink_producer(st, stages[j - 1] if j > 0 else None, rows))
        if st.noise is not None:
            units.append({"noise": str(st.noise), "producer": st.index, "units": st.units, "kept": _index(st.kept),
                          "layer": len(specs) - 1})
        for i in st.tail:
            if i != st.noise:
                add(_layer_spec(layers[i]), {})
    spec = {"family": "chain", "input_spec": list(model.input_spec.shape), "layers": specs, "units": units,
            "constant_prefix": bool(dead)}
    return spec, state


def _build_chain(spec: dict[str, Any]) -> Classifier:
    return Classifier(*(_layer_from_spec(s) for s in spec["layers"]), input_spec=InputSpec(*spec["input_spec"]))


# ------------------------------------------------------------------------------------------------
# ResNet
# ------------------------------------------------------------------------------------------------

@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together in a ResNet.

    members: BatchNorm names whose outputs carry these channels; producers: the conv before each member;
    consumers: convs (and fc) that read the channels. kind: "residual" (a residual stream with several
    members) or "single" (one BN read by convolutions only)."""

    members: list[str]
    producers: list[str]
    consumers: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "residual" if len(self.members) > 1 else "single"


def _resnet_classes():
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
    return ResNet, BasicBlock, Bottleneck


def resnet_groups(net: nn.Module) -> list[ChannelGroup]:
    """The channel groups of a torchvision ResNet (see the module docstring).

    Walks stem → layer1..4 → fc. The stream group starts at the stem BN; a block with a downsample
    branch ends it (its conv1 and downsample conv consume it) and starts a new one with the downsample
    BN; every block adds its last BN to the current stream group and one single group per internal BN.
    """
    ResNet, BasicBlock, Bottleneck = _resnet_classes()
    if not isinstance(net, ResNet):
        raise ValueError(f"expected a torchvision ResNet; got {type(net).__name__}")
    stream = ChannelGroup(["bn1"], ["conv1"])
    groups = [stream]
    for li in range(1, 5):
        for bi, block in enumerate(getattr(net, f"layer{li}")):
            p = f"layer{li}.{bi}"
            if isinstance(block, Bottleneck):
                internal, last = [("bn1", "conv1", "conv2"), ("bn2", "conv2", "conv3")], ("bn3", "conv3")
            elif isinstance(block, BasicBlock):
                internal, last = [("bn1", "conv1", "conv2")], ("bn2", "conv2")
            else:
                raise ValueError(f"{p} is a {type(block).__name__}; shrink supports BasicBlock and Bottleneck")
            stream.consumers.append(f"{p}.conv1")
            if block.downsample is not None:
                ds = block.downsample
                if not (isinstance(ds, nn.Sequential) and len(ds) == 2 and isinstance(ds[0], nn.Conv2d)
                        and isinstance(ds[1], nn.BatchNorm2d)):
                    raise ValueError(f"{p}.downsample must be Sequential(Conv2d, BatchNorm2d); got {ds}")
                stream.consumers.append(f"{p}.downsample.0")
                stream = ChannelGroup([f"{p}.downsample.1"], [f"{p}.downsample.0"])
                groups.append(stream)
            groups += [ChannelGroup([f"{p}.{bn}"], [f"{p}.{conv}"], [f"{p}.{nxt}"]) for bn, conv, nxt in internal]
            stream.members.append(f"{p}.{last[0]}")
            stream.producers.append(f"{p}.{last[1]}")
    stream.consumers.append("fc")
    return groups


def _bn_scale(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(s, kept mask) of a BN's channels: its noise layer's E[θ]·mask, or ones for a plain BatchNorm2d."""
    noise = getattr(bn, "noise", None)
    s, kept = unit_scale(noise if isinstance(noise, MultiplicativeNoise) else None, bn.num_features, bn.weight.device)
    mask = torch.zeros(bn.num_features, dtype=torch.bool, device=s.device)
    mask[kept] = True
    return s, mask


def _conv_spec(conv: nn.Conv2d, in_channels: int, out_channels: int) -> dict[str, Any]:
    spec = _layer_spec(conv)
    spec.update(in_channels=in_channels, out_channels=out_channels)
    return spec


def _plan_resnet(model: TorchvisionClassifier) -> tuple[dict[str, Any], StateDict]:
    _, _, Bottleneck = _resnet_classes()
    net = model.net
    groups = resnet_groups(net)
    modules = dict(net.named_modules())
    state = {k: v.detach() for k, v in net.state_dict().items() if "noise" not in k.split(".")}
    out_keep: dict[str, Tensor] = {}
    in_keep: dict[str, Tensor] = {}
    group_specs = []
    for g in groups:
        scales = [_bn_scale(modules[m]) for m in g.members]
        kept_mask = torch.stack([k for _, k in scales]).any(0)
        kept = torch.nonzero(kept_mask).flatten()
        placeholder = kept.numel() == 0
        if placeholder:
            kept = kept_mask.new_zeros(1, dtype=torch.long)
        for name, producer, (s, _) in zip(g.members, g.producers, scales):
            bn = modules[name]
            if not bn.affine or not bn.track_running_stats:
                raise ValueError(f"{name}: shrink needs BatchNorm2d with affine=True and running statistics")
            state[f"{name}.weight"] = _scaled(state[f"{name}.weight"], s, 0)
            state[f"{name}.bias"] = _scaled(state[f"{name}.bias"], s, 0)
            for key in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.{key}"] = state[f"{name}.{key}"][kept]
            out_keep[producer] = kept
        for consumer in g.consumers:
            in_keep[consumer] = kept
        group_specs.append({"kind": g.kind, "members": g.members, "producers": g.producers, "consumers": g.consumers,
                            "units": modules[g.members[0]].num_features, "kept": _index(kept),
                            "placeholder": placeholder,
                            "pruned_by": {m: int((~k).sum()) for m, (_, k) in zip(g.members, scales)}})
    convs: dict[str, Any] = {}
    for name, m in modules.items():
        if isinstance(m, nn.Conv2d):
            w = state[f"{name}.weight"]
            if name in out_keep:
                w = w[out_keep[name]]
                if m.bias is not None:
                    state[f"{name}.bias"] = state[f"{name}.bias"][out_keep[name]]
            if name in in_keep:
                w = w[:, in_keep[name]]
            state[f"{name}.weight"] = w
            convs[name] = _conv_spec(m, w.shape[1], w.shape[0])
    state["fc.weight"] = state["fc.weight"][:, in_keep["fc"]]
    bns = {name: {"num_features": state[f"{name}.weight"].numel(), "eps": m.eps, "momentum": m.momentum}
           for name, m in modules.items() if isinstance(m, nn.BatchNorm2d)}
    spec = {"family": "resnet", "name": model.family, "input_spec": list(model.input_spec.shape),
            "block": "bottleneck" if isinstance(net.layer1[0], Bottleneck) else "basic",
            "layers": [len(getattr(net, f"layer{i}")) for i in range(1, 5)],
            "convs": convs, "batchnorms": bns,
            "fc": {"in_features": state["fc.weight"].shape[1], "out_features": net.fc.out_features,
                   "bias": net.fc.bias is not None},
            "groups": group_specs}
    return spec, {f"net.{k}": v.clone() for k, v in state.items()}


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _build_resnet(spec: dict[str, Any]) -> TorchvisionClassifier:
    ResNet, BasicBlock, Bottleneck = _resnet_classes()
    block = {"basic": BasicBlock, "bottleneck": Bottleneck}[spec["block"]]
    net = ResNet(block, list(spec["layers"]), num_classes=spec["fc"]["out_features"])
    for name, cs in spec["convs"].items():
        _set_submodule(net, name, _layer_from_spec(cs))
    for name, bs in spec["batchnorms"].items():
        _set_submodule(net, name, nn.BatchNorm2d(bs["num_features"], eps=bs["eps"], momentum=bs["momentum"]))
    fc = spec["fc"]
    net.fc = nn.Linear(fc["in_features"], fc["out_features"], bias=fc["bias"])
    return TorchvisionClassifier(net, InputSpec(*spec["input_spec"]), spec["name"])


# ------------------------------------------------------------------------------------------------
# Vision transformer
# ------------------------------------------------------------------------------------------------

def _vit_branches(block: nn.Module) -> tuple[nn.MultiheadAttention, MultiplicativeNoise | None, nn.Sequential,
                                               MultiplicativeNoise | None]:
    attn = block.self_attention
    attn_noise = None
    if isinstance(attn, NoisyAttention):
        attn, attn_noise = attn.attention, attn.noise
    if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first or not attn._qkv_same_embed_dim \
            or attn.in_proj_bias is None or attn.bias_k is not None or attn.add_zero_attn:
        raise ValueError("shrink supports ViT self-attention with batch_first, packed in_proj with bias, "
                         "no bias_k/bias_v and no zero attention")
    mlp = list(block.mlp)
    mlp_noise = mlp[-1] if isinstance(mlp[-1], MultiplicativeNoise) else None
    core = mlp[:-1] if mlp_noise is not None else mlp
    kinds = [type(m) for m in core]
    if kinds != [nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.Dropout]:
        raise ValueError(f"shrink expects the torchvision ViT MLP (Linear, GELU, Dropout, Linear, Dropout[, noise]); "
                         f"got {[k.__name__ for k in kinds]}")
    for n in (attn_noise, mlp_noise):
        if n is not None and n.dim % 3 != 2:
            raise ValueError(f"ViT noise layers must act on the feature axis (dim=-1); got dim={n.dim}")
    return attn, attn_noise, nn.Sequential(*core), mlp_noise


def _plan_vit(model: TorchvisionClassifier) -> tuple[dict[str, Any], StateDict]:
    from torchvision.models.vision_transformer import VisionTransformer

    net = model.net
    if not isinstance(net, VisionTransformer) or not isinstance(net.conv_proj, nn.Conv2d):
        raise ValueError("shrink supports torchvision VisionTransformer with the patchify (Conv2d) stem")
    state = {k: v.detach() for k, v in net.state_dict().items() if not k.startswith("encoder.layers.")}
    blocks = []
    first = net.encoder.layers[0]
    for i, (name, block) in enumerate(net.encoder.layers.named_children()):
        attn, attn_noise, mlp, mlp_noise = _vit_branches(block)
        e = attn.embed_dim
        s_a, kept_a = unit_scale(attn_noise, e, attn.in_proj_weight.device)
        s_m, kept_m = unit_scale(mlp_noise, e, attn.in_proj_weight.device)
        p = f"encoder.layers.{name}."
        if kept_a.numel():
            state.update({p + "ln_1.weight": block.ln_1.weight.detach(), p + "ln_1.bias": block.ln_1.bias.detach(),
                          p + "self_attention.in_proj_weight": attn.in_proj_weight.detach(),
                          p + "self_attention.in_proj_bias": attn.in_proj_bias.detach(),
                          p + "self_attention.out_proj.weight": _scaled(attn.out_proj.weight, s_a, 0)[kept_a],
                          p + "self_attention.out_proj.bias": _scaled(attn.out_proj.bias, s_a, 0)[kept_a]})
        if kept_m.numel():
            state.update({p + "ln_2.weight": block.ln_2.weight.detach(), p + "ln_2.bias": block.ln_2.bias.detach(),
                          p + "mlp.0.weight": mlp[0].weight.detach(), p + "mlp.0.bias": mlp[0].bias.detach(),
                          p + "mlp.3.weight": _scaled(mlp[3].weight, s_m, 0)[kept_m],
                          p + "mlp.3.bias": _scaled(mlp[3].bias, s_m, 0)[kept_m]})
        state[p + "attention_add.index"] = kept_a.clone()
        state[p + "mlp_add.index"] = kept_m.clone()
        blocks.append({"name": name, "attention_kept": _index(kept_a), "mlp_kept": _index(kept_m)})
    attn0 = _vit_branches(first)[0]
    spec = {"family": "vit", "name": model.family, "input_spec": list(model.input_spec.shape),
            "image_size": net.image_size, "patch_size": net.patch_size, "num_layers": len(net.encoder.layers),
            "num_heads": attn0.num_heads, "hidden_dim": net.hidden_dim, "mlp_dim": net.mlp_dim,
            "dropout": net.dropout, "attention_dropout": net.attention_dropout,
            "representation_size": net.representation_size, "num_classes": net.heads.head.out_features,
            "ln_eps": first.ln_1.eps, "blocks": blocks}
    return spec, {f"net.{k}": v.clone() for k, v in state.items()}


def _build_vit(spec: dict[str, Any]) -> TorchvisionClassifier:
    from torchvision.models.vision_transformer import VisionTransformer

    net = VisionTransformer(spec["image_size"], spec["patch_size"], spec["num_layers"], spec["num_heads"],
                            spec["hidden_dim"], spec["mlp_dim"], dropout=spec["dropout"],
                            attention_dropout=spec["attention_dropout"], num_classes=spec["num_classes"],
                            representation_size=spec["representation_size"])
    for b in spec["blocks"]:
        setattr(net.encoder.layers, b["name"], PrunedEncoderBlock(
            spec["hidden_dim"], spec["num_heads"], spec["mlp_dim"], b["attention_kept"], b["mlp_kept"],
            dropout=spec["dropout"], attention_dropout=spec["attention_dropout"], ln_eps=spec["ln_eps"]))
    return TorchvisionClassifier(net, InputSpec(*spec["input_spec"]), spec["name"])


# ------------------------------------------------------------------------------------------------
# Any traced network: folding E[θ]·mask into the weights, and removing units (torch.fx)
# ------------------------------------------------------------------------------------------------

@dataclass
class Fold:
    """Where a noise layer's scale s = E[θ]·mask goes (see :func:`plan_folds`).

    kind "rows": the output rows and bias of the Linear/Conv `target` (or the channels of a depthwise conv);
    "bn": γ and β of the BatchNorm `target`; "columns": the input columns of the consumers in `columns`
    (consumer module -> indices of the marked segments of its input layout; for a depthwise conv, its
    per-channel weights)."""

    noise: str
    kind: str
    target: str | None = None
    columns: dict[str, set[int]] = field(default_factory=dict)


def _fold_back(st: Structure, nodes: dict[str, fx.Node], start: fx.Node, through: set[str]) -> Fold | None:
    """Walk from a noise layer's input back through `through` ops (single users) to a layer with per-unit
    parameters: a Linear/Conv or depthwise conv (rows), or an affine BatchNorm."""
    p = start
    while p.name in through and len(p.users) == 1 and p.name in st.src_of:
        p = nodes[st.src_of[p.name]]
    if len(p.users) != 1:
        return None
    kind = st.kinds.get(p.name)
    if kind in ("producer", "dw"):
        return Fold("", "rows", p.target)
    if kind == "bn" and st.modules[p.target].affine:
        return Fold("", "bn", p.target)
    return None


def _fold_forward(st: Structure, nodes: dict[str, fx.Node], noise: fx.Node) -> tuple[Fold | None, str]:
    """Follow every use of a noise layer's output through ops that commute with s >= 0 (and concatenations)
    to the Linear/Conv (or depthwise conv) layers that read it; (None, the blocking site) when a use goes
    anywhere else."""
    marks: dict[str, set[int]] = {noise.name: {0}}
    fold = Fold("", "columns")
    order = list(st.graph.nodes)
    for node in order[order.index(noise) + 1:]:
        marked = [a for a in _flat_nodes((node.args, node.kwargs)) if a.name in marks]
        if not marked:
            continue
        kind = st.kinds.get(node.name)
        if kind in ("producer", "dw") and node.args[0] is marked[0] and len(marked) == 1:
            fold.columns.setdefault(node.target, set()).update(marks[marked[0].name])
        elif kind == "cat":
            out: set[int] = set()
            offset = 0
            for part in node.args[0]:
                if part.name in marks:
                    out |= {offset + i for i in marks[part.name]}
                offset += len(st.layout[part.name][1]) if part.name in st.layout else 1
            marks[node.name] = out
        elif node.name in st.homogeneous and st.src_of.get(node.name) == marked[0].name and len(marked) == 1:
            marks[node.name] = set(marks[marked[0].name])
        else:
            return None, where(node, st.modules) if node.op != "output" else "the network's output"
    return fold, ""


def _noise_called_once(st: Structure, model: nn.Module) -> None:
    for name in st.noise_nodes:
        module = name.removesuffix(".noise") if name not in st.calls else name
        if st.calls[module] > 1:
            raise _fail(model, f"the noise layer '{name}' is called {st.calls[module]} times in the forward; give each "
                               "call its own noise layer (and its own Linear/Conv)")


def plan_folds(st: Structure) -> dict[str, Fold | str]:
    """For each noise layer, where its scale s = E[θ]·mask (s >= 0) can be folded exactly (else why not):

    1. into the layer right before it, through ops that are the identity in eval mode (dropout): the rows
       and bias of a Linear/Conv, s ⊙ (W x + b) = (diag(s) W) x + s ⊙ b, the channels of a depthwise conv,
       or γ and β of a BatchNorm, s ⊙ (γ x̂ + β) = (s γ) x̂ + s β (NoisyBatchNorm2d: its own BatchNorm);
    2. else into the input columns of every layer that reads it, through ops g that commute with a per-unit
       scale s >= 0 (ReLU, pooling, flattening, dropout, concatenation): W g(s ⊙ h) = (W diag(s)) g(h), a
       flattened channel owning a block of columns; into a depthwise conv's weights (its bias untouched);
    3. else back through such ops to the layer of rule 1: s ⊙ g(W x + b) = g(s ⊙ (W x + b)).
    """
    nodes = {n.name: n for n in st.graph.nodes}
    out: dict[str, Fold | str] = {}
    for name, node in st.noise_nodes.items():
        if st.kinds.get(node.name) == "noisybn":
            out[name] = Fold(name, "bn", node.target)
            continue
        src = node.args[0]
        fold = _fold_back(st, nodes, src, st.identity)
        blocker = ""
        if fold is None:
            fold, blocker = _fold_forward(st, nodes, node)
        if fold is None:
            fold = _fold_back(st, nodes, src, st.homogeneous)
        if fold is None:
            out[name] = (f"noise layer '{name}' cannot be folded into the weights: it does not follow a Linear/Conv/"
                         f"BatchNorm (through ops that commute with a per-unit scale), and its output reaches "
                         f"{blocker}, which does not commute with one")
            continue
        fold.noise = name
        out[name] = fold
    return out


def _noise_module(model: nn.Module, name: str) -> MultiplicativeNoise:
    m = model.get_submodule(name)
    return m.noise if isinstance(m, NoisyBatchNorm2d) else m


def _zero_units(st: Structure, scales: dict[str, Tensor]) -> dict[str, list[Tensor | None]]:
    """Per tensor (node name), per segment of its layout: which units are exactly zero for every input in the
    masked network's eval mode (s = 0 after a noise layer; kept through zero-preserving ops; a sum is zero
    where all its operands are)."""
    zero: dict[str, list[Tensor | None]] = {}
    noise_of = {node.name: name for name, node in st.noise_nodes.items()}

    def fresh(name: str) -> list[Tensor | None]:
        return [None if g.space is None else torch.zeros(g.width, dtype=torch.bool) for g in st.layout[name][1]]

    for kind, name, inputs, *rest in st.flow:
        if kind == "new" or kind == "live":
            zero[name] = fresh(name)
        elif kind == "same":
            zero[name] = list(zero[inputs[0]])
        elif kind in ("noise", "noise_fresh"):
            dead = scales[noise_of[name]] == 0
            prev = zero[inputs[0]][0] if kind == "noise" else None
            zero[name] = [dead | prev if prev is not None else dead]
        elif kind == "and":
            parts = [zero[i] for i in inputs]
            zero[name] = [None if any(p[k] is None for p in parts) else torch.stack([p[k] for p in parts]).all(0)
                          for k in range(len(parts[0]))]
        elif kind == "cat":
            zero[name] = [z for i in inputs for z in (zero[i] if i in zero else [None])]
    return zero


def _columns(segs: Iterable[Seg], kept: dict[int, Tensor] | None) -> Tensor:
    """Indices of the kept entries of a unit axis laid out as `segs` (unit i of a segment owns `block` entries)."""
    out, offset = [], 0
    for g in segs:
        if g.space is None or kept is None:
            idx = torch.arange(g.length)
        else:
            idx = (kept[g.space].view(-1, 1) * g.block + torch.arange(g.block)).flatten()
        out.append(idx + offset)
        offset += g.length
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _column_scale(segs: tuple[Seg, ...], marked: set[int], s: Tensor) -> Tensor:
    """The per-entry scale of an input axis whose marked segments carry a noise layer's units (scale s)."""
    parts = [s.repeat_interleave(g.block) if i in marked else torch.ones(g.length, dtype=torch.float64)
             for i, g in enumerate(segs)]
    return torch.cat(parts)


def _fail(model: nn.Module, message: str) -> ValueError:
    return ValueError(f"shrink cannot handle {type(model).__name__}: {message}")


def _rebuilt(model: nn.Module, st: Structure, folds: dict[str, Fold], kept: dict[int, Tensor] | None) -> nn.Module:
    """A deep copy of model with every noise layer's scale folded per `folds` and, when `kept` is given, every
    structure group narrowed to its kept units (module attributes updated); noise layers removed."""
    scales = {name: unit_scale(_noise_module(model, name), _noise_module(model, name).num_units, torch.device("cpu"))[0]
              for name in folds}
    row_scale: dict[str, Tensor] = {}
    col_scale: dict[str, Tensor] = {}
    for name, fold in folds.items():
        s = scales[name]
        if fold.kind in ("rows", "bn"):
            row_scale[fold.target] = row_scale.get(fold.target, torch.ones_like(s)) * s
        else:
            for consumer, marked in fold.columns.items():
                segs = st.layout[st.consumer_inputs[consumer].name][1] if consumer in st.consumer_inputs else \
                    st.layout[st.channelwise_inputs[consumer][0].name][1]
                scale = _column_scale(segs, marked, s)
                col_scale[consumer] = col_scale.get(consumer, torch.ones_like(scale)) * scale
    rows: dict[str, Tensor] = {}
    cols: dict[str, Tensor] = {}
    chans: dict[str, Tensor] = {}
    if kept is not None:
        for name, node in st.producer_nodes.items():
            rows[name] = kept[st.layout[node.name][1][0].space]
        for name, src in st.consumer_inputs.items():
            cols[name] = _columns(st.layout[src.name][1], kept)
        for name, (src, _) in st.channelwise_inputs.items():
            chans[name] = _columns(st.layout[src.name][1], kept)
    full = {name: st.groups[st.layout[node.name][1][0].space].width for name, node in st.producer_nodes.items()}
    full_in = {name: sum(seg.length for seg in st.layout[src.name][1]) for name, src in st.consumer_inputs.items()}
    full_ch = {name: sum(seg.length for seg in st.layout[src.name][1]) for name, (src, _) in st.channelwise_inputs.items()}
    changed = set(row_scale) | set(col_scale) | {n for n, r in rows.items() if r.numel() < full[n]} \
        | {n for n, c in cols.items() if c.numel() < full_in[n]} | {n for n, c in chans.items() if c.numel() < full_ch[n]}
    shared = sorted(n for n in changed if st.calls[n] > 1)
    if shared:
        raise _fail(model, f"the module '{shared[0]}' is called {st.calls[shared[0]]} times in the forward and its units "
                           "would change; give each call its own module")
    functional = sorted({n.target.rpartition(".")[0] for n in st.graph.nodes if n.op == "get_attr"} & changed)
    if functional:
        raise _fail(model, f"the parameters of '{functional[0]}' are also used outside its own forward (get_attr), "
                           "so they cannot be narrowed")

    new = copy.deepcopy(model)
    with torch.no_grad():
        for name in sorted(changed):
            _narrow(new, name, row_scale.get(name), col_scale.get(name), rows.get(name), cols.get(name),
                    chans.get(name), st.channelwise_inputs.get(name, (None, None))[1])
        _drop_noise(new, st)
    return new


def _param(old: Tensor, value: Tensor) -> nn.Parameter:
    return nn.Parameter(value.to(dtype=old.dtype, device=old.device).contiguous(), requires_grad=old.requires_grad)


def _cast(s: Tensor, like: Tensor) -> Tensor:
    """A float64 scale in the dtype and on the device of the tensor it multiplies. The product is taken in that
    dtype, as fold_noise always did, so the baselines' folded networks stay bit-identical."""
    return s.to(device=like.device, dtype=like.dtype)


def _narrow(root: nn.Module, name: str, row_s: Tensor | None, col_s: Tensor | None, rows: Tensor | None,
            cols: Tensor | None, chans: Tensor | None, channelwise: str | None) -> None:
    """Fold the scales into module `name` of root (rows first, then columns) and keep its given rows, columns or
    channels (updating in/out features, channels, groups, num_features)."""
    m = root.get_submodule(name)
    if channelwise == "bn":
        bn = m
        if isinstance(m, NoisyBatchNorm2d):
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("noise.")})
            bn = bn.to(device=m.weight.device if m.weight is not None else None)
            bn.train(m.training)
            _set_submodule(root, name, bn)
        idx = chans if chans is not None else torch.arange(bn.num_features)
        if row_s is not None:
            if not bn.affine:
                raise ValueError(f"shrink cannot fold noise into the non-affine BatchNorm '{name}'")
            bn.weight = _param(bn.weight, bn.weight.detach() * _cast(row_s, bn.weight))
            bn.bias = _param(bn.bias, bn.bias.detach() * _cast(row_s, bn.bias))
        idx = idx.to(bn.running_mean.device if bn.running_mean is not None else "cpu")
        if bn.affine:
            bn.weight, bn.bias = _param(bn.weight, bn.weight.detach()[idx]), _param(bn.bias, bn.bias.detach()[idx])
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean[idx].clone()
            bn.running_var = bn.running_var[idx].clone()
        bn.num_features = int(idx.numel())
        return
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    view = (-1,) + (1,) * (w.dim() - 1)
    if channelwise == "dw":  # depthwise conv: rows fold weight and bias, columns (a scale before it) the weight only
        if row_s is not None:
            w, b = w * _cast(row_s, w).view(view), (b * _cast(row_s, b) if b is not None else None)
        if col_s is not None:
            w = w * _cast(col_s, w).view(view)
        idx = (chans if chans is not None else torch.arange(w.shape[0])).to(w.device)
        m.weight = _param(m.weight, w[idx])
        if b is not None:
            m.bias = _param(m.bias, b[idx])
        m.in_channels = m.out_channels = m.groups = int(idx.numel())
        return
    if row_s is not None:
        w = w * _cast(row_s, w).view(view)
        b = b * _cast(row_s, b) if b is not None else None
    if col_s is not None:
        w = w * _cast(col_s, w).view((1, -1) + (1,) * (w.dim() - 2))
    if rows is not None:
        w = w[rows.to(w.device)]
        b = b[rows.to(w.device)] if b is not None else None
    if cols is not None:
        w = w[:, cols.to(w.device)]
    m.weight = _param(m.weight, w)
    if b is not None:
        m.bias = _param(m.bias, b)
    if isinstance(m, nn.Linear):
        m.in_features, m.out_features = w.shape[1], w.shape[0]
    else:
        m.in_channels, m.out_channels = w.shape[1], w.shape[0]


def _drop_noise(root: nn.Module, st: Structure) -> None:
    """Remove the (folded) noise layers: erased from a GraphModule's graph, replaced by nn.Identity elsewhere."""
    free = [name for name, node in st.noise_nodes.items() if st.kinds.get(node.name) == "noise"]
    if isinstance(root, fx.GraphModule):
        by_name = {n.name: n for n in root.graph.nodes}
        for name in free:
            node = by_name[st.noise_nodes[name].name]
            node.replace_all_uses_with(node.args[0])
            root.graph.erase_node(node)
            root.delete_submodule(name)
        containers = {name.rpartition(".")[0] for name in free} - {""}
        for c in containers:
            if c and not list(root.get_submodule(c).children()):
                root.delete_submodule(c)
        root.graph.lint()
        root.recompile()
        return
    for name in free:
        _set_submodule(root, name, nn.Identity())


def fold_noise(model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
    """A deep copy of a BMRS network with every noise layer replaced by its eval-mode scale E[θ]·mask, folded
    into the weights (rules of :func:`plan_folds`), so the copy has no noise layer and the same eval outputs.

    NoisyBatchNorm2d (ResNet) becomes a BatchNorm2d with γ, β scaled; NoisyAttention (ViT) its
    nn.MultiheadAttention with the output projection's rows and bias scaled; the other noise layers are found
    by tracing (example_input, else model.example_input()). The architecture is unchanged (no unit is removed):
    EigenDamage and the other baselines of the post-hoc protocol prune the folded network (option (b) of
    folding the BMRS noise into a plain network for them).
    """
    new = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in list(new.named_modules()):
            if isinstance(m, NoisyAttention):
                s = unit_scale(m.noise, m.noise.num_units, m.attention.out_proj.weight.device)[0]
                out = m.attention.out_proj
                out.weight.mul_(_cast(s, out.weight).view(-1, 1))
                if out.bias is not None:
                    out.bias.mul_(_cast(s, out.bias))
                _set_submodule(new, name, m.attention)
        if not any(True for _ in noise_layers(new)):
            return new
        st = trace_structure(new, example_input_for(model, example_input), what="fold_noise")
        _noise_called_once(st, model)
        folds = plan_folds(st)
        for reason in folds.values():
            if isinstance(reason, str):
                raise ValueError(f"fold_noise: {reason}")
        return _rebuilt(new, st, folds, None)


def _shrink_traced(model: nn.Module, example_input: Tensor | None) -> nn.Module:
    """shrink() for any network bmrs.nn.graph.trace_structure can read (see the module docstring)."""
    st = trace_structure(model, example_input_for(model, example_input), what="shrink")
    _noise_called_once(st, model)
    if st.bad_noise:
        name, why = next(iter(st.bad_noise.items()))
        raise _fail(model, f"noise layer '{name}': {why}")
    for g in st.groups:
        if g.noise and g.barriers:
            raise _fail(model, f"the units of noise layer '{g.noise[0]}' reach {g.barriers[0]}, which shrink cannot "
                               "narrow (attach_noise leaves such units without noise)")
    folds = plan_folds(st)
    for reason in folds.values():
        if isinstance(reason, str):
            raise _fail(model, reason)
    scales = {name: unit_scale(_noise_module(model, name), _noise_module(model, name).num_units,
                               torch.device("cpu"))[0] for name in folds}
    zero = _zero_units(st, scales)
    removable = {g.index: torch.zeros(g.width, dtype=torch.bool) for g in st.groups}
    seen = {g.index: False for g in st.groups}
    for name, src in st.consumer_inputs.items():
        for seg, z in zip(st.layout[src.name][1], zero.get(src.name, [])):
            if seg.space is None:
                continue
            removable[seg.space] = z.clone() if not seen[seg.space] else removable[seg.space] & z
            seen[seg.space] = True
    kept: dict[int, Tensor] = {}
    for g in st.groups:
        rem = removable[g.index] if seen[g.index] and not g.barriers else torch.zeros(g.width, dtype=torch.bool)
        idx = torch.nonzero(~rem).flatten()
        kept[g.index] = idx if idx.numel() else torch.zeros(1, dtype=torch.long)  # a zero placeholder unit
    out = _rebuilt(model, st, folds, kept)
    out.eval()
    return out


# ------------------------------------------------------------------------------------------------
# shrink / build / save / load
# ------------------------------------------------------------------------------------------------

_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "chain": _build_chain, "resnet": _build_resnet, "vit": _build_vit}


def _family(model: nn.Module) -> str | None:
    """The dedicated planner of bmrs's own networks ("chain", "resnet", "vit"), or None for the traced path."""
    if isinstance(model, Classifier):
        return "chain"
    if isinstance(model, TorchvisionClassifier):
        from torchvision.models import ResNet, VisionTransformer  # deferred: torchvision is heavy to import
        if isinstance(model.net, ResNet):
            return "resnet"
        if isinstance(model.net, VisionTransformer):
            return "vit"
    return None


_PLANNERS: dict[str, Callable[[nn.Module], tuple[dict[str, Any], StateDict]]] = {
    "chain": lambda m: _plan_chain(m), "resnet": lambda m: _plan_resnet(m), "vit": lambda m: _plan_vit(m)}


def build(spec: dict[str, Any], state: StateDict) -> nn.Module:
    """Instantiate the network described by an architecture dict and load `state` into it (eval mode).

    Modules are created on the meta device and take the tensors of `state` (dtype and device included),
    so no memory is spent on initialising weights that are overwritten anyway."""
    family = spec.get("family")
    if family not in _BUILDERS:
        raise ValueError(f"unknown compact network family {family!r}; known: {', '.join(_BUILDERS)}")
    with torch.device("meta"):
        model = _BUILDERS[family](spec)
    model.load_state_dict(state, strict=True, assign=True)
    model.compact_architecture = spec
    return model.eval()


def shrink(model: nn.Module, example_input: Tensor | None = None) -> nn.Module:
    """A new dense network without noise layers and without pruned units whose eval-mode outputs equal
    those of `model` in eval mode (see the module docstring for the folding algebra).

    bmrs's own networks (mlp, lenet5, resnet, vit) are rebuilt from a JSON-able architecture dict (carried as
    `.compact_architecture`, used by :func:`save_compact`). Any other network with noise layers — what
    bmrs.attach_noise returns, or a module with MultiplicativeNoise placed by hand — is traced with torch.fx
    on `example_input` (default: model.example_input()) and narrowed module by module (a deep copy: same
    class, same names; a GraphModule loses its noise nodes). `model` is not modified; the result is in eval
    mode, on model's device and dtype."""
    family = _family(model)
    if family is None:
        if not any(True for _ in noise_layers(model)):
            raise ValueError(f"shrink found no noise layer in {type(model).__name__}: attach them with "
                             f"bmrs.attach_noise(model, example_input) and train; supported: {SUPPORTED}")
        with torch.no_grad():
            return _shrink_traced(model, example_input)
    with torch.no_grad():
        spec, state = _PLANNERS[family](model)
    spec = {"format_version": FORMAT_VERSION, **spec}
    return build(spec, state)


def dense_network(model: nn.Module) -> nn.Module:
    """The dense deployable network of a masked model: every mask set to one, the noise folded in."""
    return shrink(unmasked(model))


def save_compact(model: nn.Module, directory: Path | str) -> Path:
    """Write `model` (returned by :func:`shrink` or :func:`load_compact`) to directory/{state_dict.pt,
    architecture.json}, each atomically (temporary file + os.replace). The state_dict holds tensors only
    (loadable with torch.load(weights_only=True)); the JSON holds everything needed to rebuild the modules."""
    spec = getattr(model, "compact_architecture", None)
    if spec is None:
        raise ValueError("save_compact rebuilds bmrs's own networks (mlp, lenet5, resnet, vit) from JSON and needs one "
                         "returned by shrink or load_compact (it carries .compact_architecture); save a shrunk network "
                         "of your own with torch.save(model, path)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / "state_dict.pt") as tmp:
        torch.save(state, tmp)
    write_json(directory / "architecture.json", spec)
    return directory


def load_compact(directory: Path | str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a network written by :func:`save_compact` (no pickled classes are loaded)."""
    directory = Path(directory)
    arch, weights = directory / "architecture.json", directory / "state_dict.pt"
    for path in (arch, weights):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; write it with bmrs.nn.shrink.save_compact "
                                    "(or python -m bmrs compact RUN_DIR)")
    spec = json.loads(arch.read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{arch} has format_version {spec.get('format_version')}; this bmrs reads {FORMAT_VERSION}")
    return build(spec, torch.load(weights, map_location=map_location, weights_only=True))
