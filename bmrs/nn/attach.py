"""Attach BMRS noise layers to any PyTorch network, found by tracing (arXiv:2406.01345, Eq. 1; noise placement as in the released code's modules/classifiers.py).

:func:`attach_noise` puts one :class:`~bmrs.nn.noise.MultiplicativeNoise` on the output units of every
prunable Linear layer (features) and Conv layer (channels) of an arbitrary ``nn.Module`` — ``nn.Sequential``,
modules with their own ``forward``, residual additions, concatenations, torchvision's ResNet, VGG and
MobileNetV2 — and returns the network with the layers added and a report of what it added and what it left
without noise, and why.

Why torch.fx (and not the autograd graph that :func:`bmrs.nn.graph.trace_unit_groups` walks): placing a layer
means rewriting the forward at a *call site* — after the ReLU that follows this convolution, before that
residual addition — and torchvision's ResNet calls one ``self.relu`` module twice per block, MobileNetV2 and
user code call activations as functions. The autograd graph records operations but cannot be edited; an fx
graph has every call site with its arguments, and a shape propagation gives each tensor's shape. The price is
fx's: a forward with data-dependent Python control flow cannot be traced (pass the offending submodule's
class in ``leaves``: it is kept whole, and its own units get no noise).

Where the noise goes (``placement``), for each Linear/Conv producer, along the chain of per-unit operations that
follows it (batch norm, activations, dropout, pooling, depthwise convolutions; the chain ends where the tensor
is used twice, added, concatenated, flattened or read by the next Linear/Conv):

* ``"activation"`` (default; the paper's MLP and LeNet5, noise after the nonlinearity): after the last
  activation of the chain; ``"batchnorm"`` (the paper's ResNets, noise after every BatchNorm): after its
  last BatchNorm;
* the site is never before an operation that turns a zero into something else (batch norm's shift, a
  sigmoid, a depthwise conv's bias): there a pruned unit would not be exactly zero at the next layer and
  could not be removed. When the preferred kind does not occur after the last such operation — e.g. a
  ResNet's ``bn2`` is added to the shortcut before its ReLU — the noise goes right after that operation
  (after ``bn2``, before the addition), or after the Linear/Conv itself, and the report says so.

Tensors added by residual connections are one *structure group* (bmrs.nn.graph.StructureGroup): every
member (each branch's producer) gets its own noise layer, and bmrs.nn.shrink removes a channel of the stream
only when every member prunes it. Units left without noise (reported with the reason): the network's output
(e.g. the classifier head), units that reach an operation shrink cannot narrow (a permute, a tensor × tensor
gate, a reshape that hard-codes their number, a grouped convolution), groups the caller excludes (``exclude``:
module names or classes; excluding one member of a residual group excludes the group).

The returned network is a :class:`NoiseAttached` (a ``torch.fx.GraphModule``: the traced forward with the
noise layers inserted, named ``bmrs_noise.<producer>``; the original submodules, names and state_dict keys
are kept, the caller's model is not modified). It carries ``.noise_report`` and ``example_input()``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from bmrs.nn.graph import OPS, Structure, symbolic_trace, trace_structure, where
from bmrs.nn.noise import MultiplicativeNoise, noise_layers
from bmrs.nn.shrink import plan_folds

PLACEMENTS = ("activation", "batchnorm")
_ACTIVATIONS = {op.name for op in OPS if op.kind == "elementwise" and not op.identity_in_eval and op.name != "scale"}
_CHAIN = _ACTIVATIONS | {op.name for op in OPS if op.kind in ("elementwise", "pool")} | {"bn", "dw"}
_CONTAINER = "bmrs_noise"


@dataclass
class AddedNoise:
    """One noise layer attach_noise added: its module name, the Linear/Conv whose output units it scales, the
    call site it follows, its number of units, its structure group, and a note where the site is a fallback."""

    name: str
    producer: str
    site: str
    units: int
    group: int
    note: str = ""


@dataclass
class SkippedLayer:
    """A Linear/Conv whose output units got no noise, and why."""

    producer: str
    reason: str


@dataclass
class AttachReport:
    """What attach_noise did; ``str(report)`` is a readable table."""

    model: str
    placement: str
    added: list[AddedNoise] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def units(self) -> int:
        return sum(a.units for a in self.added)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"attach_noise({self.model}, placement={self.placement!r}): {len(self.added)} noise layers, "
                 f"{self.units} units, {sum(1 for g in self.groups if g['residual'])} residual groups"]
        for a in self.added:
            note = f"  [{a.note}]" if a.note else ""
            lines.append(f"  + {a.name:<34} {a.units:>5} units of {a.producer} (group {a.group}), after {a.site}{note}")
        for s in self.skipped:
            lines.append(f"  - {s.producer}: no noise ({s.reason})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class NoiseAttached(fx.GraphModule):
    """The network attach_noise returns: a GraphModule (the traced forward with the noise layers) that keeps
    the original submodules (containers included), root parameters and attributes, plus
    ``noise_report`` and ``example_input(batch)``; a deep copy keeps all of it."""

    @property
    def noise_report(self) -> AttachReport:
        return self.meta["bmrs_report"]

    def example_input(self, batch: int | None = None) -> Tensor:
        """zeros of the traced example input's shape (batch size `batch`, default the traced one)."""
        shape, dtype = self.meta["bmrs_example"]
        shape = (batch if batch is not None else shape[0], *shape[1:])
        param = next(iter(self.parameters()), None)
        return torch.zeros(shape, dtype=dtype, device=param.device if param is not None else None)

    def __deepcopy__(self, memo: dict[int, Any]) -> "NoiseAttached":
        res = super().__deepcopy__(memo)
        _restore(res, self, lambda obj: memo.get(id(obj), obj))
        return res


def _restore(gm: fx.GraphModule, source: nn.Module, same=lambda obj: obj) -> None:
    """Give gm the children (containers keep their class), root parameters, buffers and public attributes of
    `source` (`same` maps an object of source to its counterpart, e.g. through a deepcopy memo)."""
    for name, child in source.named_children():
        setattr(gm, name, same(child))
    for name, p in source._parameters.items():
        if p is not None and name not in gm._parameters:
            gm.register_parameter(name, same(p))
    for name, b in source._buffers.items():
        if b is not None and name not in gm._buffers:
            gm.register_buffer(name, same(b), persistent=name not in source._non_persistent_buffers_set)
    for name, value in vars(source).items():
        if not name.startswith("_") and name not in ("training", "meta", "graph", "code") and not hasattr(gm, name):
            setattr(gm, name, same(value))


_FUNCTIONAL_DROPOUT = {F.dropout: nn.Dropout, F.dropout1d: nn.Dropout1d, F.dropout2d: nn.Dropout2d,
                       F.dropout3d: nn.Dropout3d, F.alpha_dropout: nn.AlphaDropout}


def _dropout_modules(gm: fx.GraphModule) -> list[str]:
    """Tracing evaluates ``F.dropout(x, p, self.training)`` once, so the traced forward would drop out in eval mode
    too (or never): each such call becomes an nn.Dropout module (``bmrs_dropout.<node>``) that follows the mode."""
    notes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _FUNCTIONAL_DROPOUT:
            continue
        args = dict(zip(("input", "p", "training", "inplace"), node.args)) | dict(node.kwargs)
        if isinstance(args.get("training", True), fx.Node) or isinstance(args.get("p", 0.5), fx.Node):
            continue
        if not hasattr(gm, "bmrs_dropout"):
            gm.add_module("bmrs_dropout", nn.ModuleDict())
        gm.bmrs_dropout[node.name] = _FUNCTIONAL_DROPOUT[node.target](float(args.get("p", 0.5)))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(f"bmrs_dropout.{node.name}", (args["input"],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        notes.append(f"{where(new, dict(gm.named_modules()))}: the functional dropout became a module, so that "
                     "eval() switches it off")
    if notes:
        gm.recompile()
    return notes


def _excluded(exclude: Iterable[str | type], producers: list[str], modules: dict[str, nn.Module]) -> set[str]:
    names, types = set(), []
    for item in exclude:
        if isinstance(item, type):
            types.append(item)
        elif isinstance(item, str):
            names.add(item)
        else:
            raise ValueError(f"exclude takes module names and classes; got {item!r}")
    unknown = sorted(n for n in names if n not in modules)
    if unknown:
        raise ValueError(f"exclude names {unknown[0]!r}, which is not a module of the model; its Linear/Conv layers "
                         f"are {', '.join(producers) or 'none'}")
    out = set()
    for p in producers:
        if p in names or any(p == n or p.startswith(n + ".") for n in names) or isinstance(modules[p], tuple(types)):
            out.add(p)
    return out


def _chain(st: Structure, producer: fx.Node) -> list[fx.Node]:
    """The single-user chain of per-unit operations after a producer (see the module docstring)."""
    out, cur = [], producer
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        kind = st.kinds.get(user.name)
        if kind not in _CHAIN or st.src_of.get(user.name) != cur.name:
            break
        out.append(user)
        cur = user
    return out


def _zero_preserving(st: Structure, node: fx.Node) -> bool:
    """False for an op after which an exactly-zero unit is no longer zero (the "live" steps of st.flow)."""
    return not any(kind == "live" and name == node.name for kind, name, *_ in st.flow)


def _site(st: Structure, producer: fx.Node, placement: str) -> tuple[fx.Node, str]:
    """The call site after which the producer's noise goes, and a note when it is a fallback."""
    chain = _chain(st, producer)
    last_nz = max((i for i, n in enumerate(chain) if not _zero_preserving(st, n)), default=-1)
    tail = chain[last_nz:] if last_nz >= 0 else chain
    acts = [n for n in tail if st.kinds[n.name] in _ACTIVATIONS]
    bns = [n for n in tail if st.kinds[n.name] == "bn"]
    base = chain[last_nz] if last_nz >= 0 else producer
    want, other = (acts, bns) if placement == "activation" else (bns, acts)
    if want:
        return want[-1], ""
    after = "a residual addition" if any(st.kinds.get(u.name) == "add" for u in (chain[-1] if chain else producer).users) \
        else "the next layer"
    kind = "activation" if placement == "activation" else "BatchNorm"
    if other:
        return other[-1], f"no {kind} before {after}"
    return base, f"no {kind} before {after}"


def attach_noise(model: nn.Module, example_input: Tensor, *, placement: str = "activation",
                 exclude: Iterable[str | type] = (), leaves: Iterable[type] = (), verbose: bool = False,
                 **noise_kwargs: Any) -> NoiseAttached:
    """A copy of `model` with a MultiplicativeNoise on the output units of every prunable Linear/Conv layer.

    Args:
        model: any nn.Module whose forward torch.fx can trace (it is deep-copied, not modified).
        example_input: a batch the model accepts (shapes are propagated once, in eval mode, without gradients).
        placement: "activation" (after the last activation following each layer) or "batchnorm" (after its
            BatchNorm); see the module docstring for the fallbacks.
        exclude: module names (a container excludes the layers inside it) or classes whose units get no noise.
        leaves: module classes traced as opaque calls (their units are not pruned).
        verbose: print the report.
        noise_kwargs: passed to every MultiplicativeNoise (a, b, mu_init, log_sigma_init, eps).

    Returns a :class:`NoiseAttached` network with ``.noise_report`` (an :class:`AttachReport`). Raises one
    ValueError naming the fix for a model that cannot be traced, an example input it does not accept, a model
    that already has noise layers, or one without any prunable Linear/Conv layer.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}; got {placement!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"attach_noise needs an nn.Module; got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise ValueError("attach_noise needs example_input=<a batch the model accepts, a torch.Tensor>; got "
                         f"{type(example_input).__name__}")
    if any(True for _ in noise_layers(model)):
        raise ValueError(f"{type(model).__name__} already has noise layers; attach_noise takes the plain network")
    if hasattr(model, _CONTAINER):
        raise ValueError(f"{type(model).__name__} already has an attribute {_CONTAINER!r}; rename it")
    net = copy.deepcopy(model)
    graph = symbolic_trace(net, leaves, what="attach_noise")
    gm = NoiseAttached(net, graph, class_name=type(model).__name__)
    _restore(gm, net)
    converted = _dropout_modules(gm)
    gm.train(model.training)
    gm.meta["bmrs_example"] = (tuple(example_input.shape), example_input.dtype)
    st = trace_structure(gm, example_input, what="attach_noise")
    producers = list(st.producer_nodes)
    if not producers and not st.skipped:
        raise ValueError(f"attach_noise found no Linear/Conv layer in {type(model).__name__}: nothing to prune")
    excluded = _excluded(exclude, producers, st.modules)
    report = AttachReport(type(model).__name__, placement, notes=converted)
    report.skipped += [SkippedLayer(p, why) for p, why in st.skipped.items()]
    container = nn.ModuleDict()
    gm.add_module(_CONTAINER, container)
    added: dict[str, fx.Node] = {}
    for g in st.groups:
        members = list(g.producers)
        hit = [p for p in members if p in excluded]
        if g.barriers:
            more = f" (and {len(g.barriers) - 1} more)" if len(g.barriers) > 1 else ""
            report.skipped += [SkippedLayer(p, f"its units reach {g.barriers[0]}{more}, which shrink cannot narrow")
                               for p in members]
            continue
        if hit:
            report.skipped += [SkippedLayer(p, "excluded" if p in excluded else f"shares its units with the excluded "
                                               f"{hit[0]} (one residual group)") for p in members]
            continue
        for p in members:
            node = st.producer_nodes[p]
            site, note = _site(st, node, placement)
            axis = st.layout[site.name][0]
            ndim = len(site.meta["tensor_meta"].shape)
            key = p.replace(".", "_")
            param = next(iter(st.modules[p].parameters()))
            container[key] = MultiplicativeNoise(g.width, dim=1 if axis == 1 else axis - ndim, **noise_kwargs).to(param.device)
            with gm.graph.inserting_after(site):
                new = gm.graph.call_module(f"{_CONTAINER}.{key}", (site,))
            site.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
            added[p] = new
            report.added.append(AddedNoise(f"{_CONTAINER}.{key}", p, where(site, st.modules), g.width, g.index, note))
    gm.recompile()
    if not report.added:
        reasons = "; ".join(f"{s.producer}: {s.reason}" for s in report.skipped[:3])
        raise ValueError(f"attach_noise found no prunable layer in {type(model).__name__} ({reasons}); exclude fewer "
                         "layers or make the units reach the next Linear/Conv through supported operations")
    _check_foldable(gm, example_input, report, added)
    report.groups = [{"group": g.index, "units": g.width, "producers": g.producers, "residual": g.residual,
                      "noise": [a.name for a in report.added if a.group == g.index]}
                     for g in st.groups if any(a.group == g.index for a in report.added)]
    gm.meta["bmrs_report"] = report
    gm.train(model.training)
    if verbose:
        print(report)
    return gm


def _check_foldable(gm: NoiseAttached, example_input: Tensor, report: AttachReport, added: dict[str, fx.Node]) -> None:
    """Drop the noise layers that bmrs.nn.shrink could not fold exactly (reported), so shrink always works."""
    st = trace_structure(gm, example_input, what="attach_noise")
    folds = plan_folds(st)
    bad = {name: why for name, why in folds.items() if isinstance(why, str)}
    if not bad:
        return
    for a in list(report.added):
        if a.name in bad:
            node = added[a.producer]
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.get_submodule(_CONTAINER).pop(a.name.split(".", 1)[1])
            report.added.remove(a)
            report.skipped.append(SkippedLayer(a.producer, bad[a.name]))
    gm.recompile()
