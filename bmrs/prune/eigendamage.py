"""EigenDamage (Wang et al., ICML 2019) and its parameter-coordinate sibling C-OBD, as BMRS baselines.

EigenDamage: Wang, Grosse, Fidler & Zhang, ICML 2019 (arXiv:1905.05934); the authors' code
``alecwangcq/EigenDamage-Pytorch`` (``pruner/kfac_eigen_pruner.py`` = EigenDamage, ``pruner/fisher_diag_pruner.py``
= C-OBD, ``main_prune.py`` = the schedules and fine-tuning). File names below refer to that repository.

EigenDamage (``pruner/kfac_eigen_pruner.py``)
    1. :func:`collect_kfac` — K-FAC factors per Linear/Conv2d layer from one statistics pass in eval mode
       with labels sampled from the model's own softmax (true Fisher), float64. Linear layers:
       ``A = E[ā āᵀ]`` (ā = [a; 1] with a bias), ``S = E[Ds Dsᵀ]`` with ``Ds = ∂ℓ_n/∂s``. Conv layers use
       the "patch/channel" variant: every kernel offset's channel vector is one sample, with the constant
       ``1/P`` appended for the bias, ``A_c = (1/N)(1/P) Σ_n Σ_t Σ_p ā āᵀ`` (C_in(+1) square) and
       ``S = (1/N)(1/|T|) Σ_n Σ_t Ds Dsᵀ``. Inputs come from forward hooks, ``Ds`` from tensor hooks on the
       layer outputs (``output.register_hook``, not the code's deprecated ``register_backward_hook``), rescaled by the batch size (the loss is the
       batch mean). Every layer is normalised per example in the same way, so the constant shared by all
       layers cancels in the global threshold.
    2. :func:`eigen_basis` / :func:`rotate_and_score` — ``A = Q_A Λ_A Q_Aᵀ``, ``S = Q_S Λ_S Q_Sᵀ``
       (``torch.linalg.eigh``, eigenvalues below 1e-10 set to 0), ``W* = Q_Sᵀ W Q_A`` per kernel offset,
       ``I = W*² ⊙ λ_S λ_Aᵀ`` summed over the offsets, row scores ``r_i = Σ_j I_ij`` (output eigen-neurons)
       and column scores ``c_j = Σ_i I_ij`` (input eigen-channels). ``½ r_i`` and ``½ c_j`` are the increases
       of the K-FAC quadratic model when the row/column of W* is zeroed (checked in the tests).
    3. :func:`select` — one global threshold ``τ = sorted[int(p·len)]`` over the rows and columns of all
       scored layers (every Linear/Conv2d except the classifier = the last one in module order), keep
       ``score > τ``, per-layer cap (0.95 one-pass, 0.5 iterative) and at least one unit kept (``prune_ratio_limit`` of the configs).
    4. :class:`EigenBottleneck` — rotate → core → rotate; the bias enters through a constant input of
       the first rotation; the core keeps the conv's stride, padding, dilation; rotations are trainable
       ``nn.Parameter`` s (``fix_rotation: false`` in the configs). A layer stays dense when the bottleneck would have
       more parameters than it (the code's size check).
    5. :class:`EigenDamage` — ``fit`` (statistics + eigenbases, once), ``prune`` (a new model for any
       ratio, scores shared across ratios), ``iterative`` (rounds of ratio 0.5 / cap 0.5 with factors
       recomputed on the cores and the new bases merged into the old rotations, as the code's ``_merge_Qs``).
    6. :func:`recalibrate_bn` (the code's ``stablize_bn``). Parameters and MACs are counted by
       bmrs.nn.measure.count_parameters (rotations included, as the authors count them: frozen ones through
       :meth:`EigenBottleneck.counted_buffers`) and bmrs.nn.measure.count_macs (the rotations' matmuls, the
       input rotation at the input resolution, as ``utils/compute_flops.py``) — one convention for every
       network of the project.

    EigenDamage operates on a PLAIN network. bmrs.nn.shrink.fold_noise (re-exported here) turns a BMRS-trained
    network into one: every MultiplicativeNoise is replaced by its test-time scale E[θ]·mask folded into the
    weights (the network the BMRS runs evaluate) by the folding rules shrink uses: into the next Linear/Conv's input columns for the MLP/LeNet5 (noise after Tanh/ReLU;
    positive scales commute with ReLU and max-pool; a flattened conv channel owns a block of columns),
    into the preceding layer's rows where a Linear/Conv feeds the noise directly (ViT MLP), into
    γ and β of the BatchNorm for the ResNets, and into the attention output projection for the ViT.

C-OBD (the EigenDamage paper's diagonal-Fisher baseline, ``pruner/fisher_diag_pruner.py``)
    :class:`COBD` is a :class:`bmrs.prune.criteria.Criterion` on the units BMRS prunes (the noise layers'
    units). ``fit`` computes the diagonal Fisher ``F_qq = E[(∂ℓ_n/∂θ_q)²]`` of every producer weight (and
    bias) from exact per-example gradients in closed form (``Ds_n ā_nᵀ`` for Linear, ``Σ_t Ds_{n,t} ā_{n,t}ᵀ``
    for Conv2d, one kernel offset at a time) with model-sampled labels, in eval mode, on the noisy model itself (noise
    layers in eval mode are fixed per-unit scales, so the Fisher of the producer weights equals that of the
    folded network). A unit's score is ``Σ_{q ∈ its producer row, bias included} θ_q² F_qq`` (no ½, no
    weight update), so the project's post-training sweep and masks apply unchanged.

Deviations from the authors' code (``alecwangcq/EigenDamage-Pytorch``)
    * No 150-epoch SGD fine-tuning per pruning level (``main_prune.py``). The comparison protocol gives every
      method the same post-pruning budget (1 epoch of Adam as in BMRS, :mod:`bmrs.run.posthoc`); fine-tuning is whatever
      callable the caller passes (``EigenDamage.iterative(finetune=...)``).
    * No best-on-test selection (the code reports the best test accuracy over the epochs); callers select on the validation split or report the
      final epoch.
    * The factors use one full pass over the training split by default;
      ``n_batches`` (``EigenDamage.fit``) and ``max_batches`` (``COBD``) restrict them to the first batches
      of a seeded shuffle — record it when used.
    * Factors are per-example means (``1/N`` over all examples) instead of per-batch means summed
      over batches. Both are one constant shared by all layers (the ranking is unchanged up to the uneven
      last batch); the eigenvalue floor of 1e-10 therefore acts on the mean scale.
    * No data augmentation during the statistics pass — the BMRS MLP/LeNet5 pipelines have none.
    * When a layer would keep no unit, the highest-scoring unit is kept. The code falls back to
      index 0, the direction with the *smallest* eigenvalue in ``eigh`` order, and also replaces a single
      survivor by index 0.
    * A conv with a bias and padding is rebuilt by padding its input *before* the input rotation (the
      constant 1/P channel is present in the border, exactly as in the statistics), and the core
      runs without padding; with nothing pruned the bottleneck then equals the original conv everywhere.
      The code pads after the rotation, so near the border the bias is scaled by the fraction of offsets
      inside the image. This matters for neither the BMRS LeNet5 (no padding) nor VGG/ResNet (no conv
      bias). Non-zero padding modes are handled the same way.
    * Grouped convolutions (groups > 1) are not scored and stay dense (the channel-variant factors
      and the rotations are defined for groups = 1); dilation is honoured in the patch extraction (the
      code's patch extractor ignores it).
    * :func:`recalibrate_bn` switches only the BatchNorm layers to train mode (dropout and any noise
      stay in eval mode); ``reset=True`` replaces the running averages by exact cumulative statistics.
    * C-OBD units are masked through the noise layers and ranked by the project's
      ``global_keep_masks`` (exactly ``round(fraction·N)`` units, one threshold), like every other
      criterion of the sweep; the per-layer cap and keep-one rule of EigenDamage are not applied to C-OBD.
      Its per-example gradients are exact (closed forms); batch size 64 as in the code.
    * For BMRS-trained networks the base is the trained network itself: :func:`fold_noise` (E[θ] of the truncated
      log-normal times the mask, folded into the weights).
    * The K-FAC label sampling draws from a CPU ``torch.Generator`` seeded by ``seed`` (reproducible on
      CPU and CUDA alike).

Notes for the BMRS networks
    * The size check and the per-layer cap interact strongly with small, wide-input layers. A
      rebuilt layer pays d_in'·r_in for its input rotation, so a Linear(1024 → 50) only shrinks when
      r_in < ~50, i.e. when more than 95% of its input eigen-channels go — the one-pass cap of 0.95
      never allows that, and the MLP's first layer (most of its parameters) stays dense at every ratio.
      On a LeNet5 trained on digits nothing was rebuilt below a ratio of about 0.6. With the iterative
      settings (0.5, cap 0.5) no fully connected layer of LeNet5 and no MLP layer can ever pass the size
      check (e.g. LeNet5's fc1 needs r_in ≤ 88 of 401 at r_out = 60); only the convolutions can shrink.
      ``cap`` is a parameter of ``prune``/``iterative`` for anyone exploring beyond the paper's values.
    * Cost: the largest factor is the MLP's 1025×1025 A; scoring takes seconds on a CPU.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmrs.nn.graph import UnitGroup, trace_unit_groups
from bmrs.nn.measure import count_parameters
from bmrs.nn.noise import MultiplicativeNoise, noise_layers
from bmrs.nn.shrink import fold_noise  # re-exported: the baselines' way from a BMRS network to a plain one
from bmrs.prune.criteria import Criterion
from bmrs.util.batches import iterate_batches

EIG_FLOOR = 1e-10  # eigenvalues below this are set to 0 (as kfac_eigen_pruner.py)
_CHUNK_ELEMENTS = 1 << 24  # bound on the temporaries of one statistics chunk


# ----------------------------------------------------------------------------------------------------
# Layer geometry helpers
# ----------------------------------------------------------------------------------------------------

def _is_scorable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _patch(module: nn.Module) -> int:
    return int(module.kernel_size[0] * module.kernel_size[1]) if isinstance(module, nn.Conv2d) else 1


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) of the conv's padding, 'same'/'valid' included."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for d, k in zip(conv.dilation, conv.kernel_size):  # 'same': total = d(k-1), left = total // 2
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        (t, b), (l, r) = pads
        return (l, r, t, b)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def _pad(x: Tensor, pads: tuple[int, int, int, int], mode: str) -> Tensor:
    if not any(pads):
        return x
    return F.pad(x, pads, mode="constant" if mode == "zeros" else mode)


def _offset_crops(conv: nn.Conv2d, x: Tensor) -> Iterable[Tensor]:
    """For each kernel offset p = (i, j) (row-major, as in the weight), the (N, C_in, H_out, W_out) input
    values that offset multiplies — the conv's padding (mode included), stride and dilation honoured."""
    x = _pad(x, _explicit_padding(conv), conv.padding_mode)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ho = (x.shape[-2] - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[-1] - dw * (kw - 1) - 1) // sw + 1
    for i in range(kh):
        for j in range(kw):
            yield x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]


def _chunks(n: int, per_example: int) -> Iterable[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(per_example, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


# ----------------------------------------------------------------------------------------------------
# Statistics pass: inputs from forward hooks, per-example output gradients from tensor hooks
# ----------------------------------------------------------------------------------------------------

def sample_labels(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One label per example drawn from softmax(logits) (true Fisher, as the code's ``fisher_type = "true"``),
    with a CPU generator."""
    probs = torch.softmax(logits.detach().double(), dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def _statistics_pass(model: nn.Module, batches: Iterable, layers: Mapping[str, nn.Module], *,
                     device: torch.device | str, generator: torch.Generator | None, labels: str,
                     on_batch: Callable[[str, nn.Module, Tensor, Tensor], None]) -> None:
    """For every batch: eval-mode forward, labels sampled from the model (or the true ones), backward of
    the mean cross-entropy; calls on_batch(name, layer, layer input, ∂ℓ_n/∂output per example)."""
    if labels not in ("sample", "true"):
        raise ValueError(f"labels must be 'sample' (true Fisher) or 'true' (empirical Fisher); got {labels!r}")
    captured: dict[str, list[tuple[Tensor, Tensor]]] = {}
    handles = []

    def forward_hook(name: str):
        def hook(module, inputs, output):
            if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
                return
            a = inputs[0].detach()
            output.register_hook(lambda g, a=a: captured.setdefault(name, []).append((a, g.detach())))
        return hook

    modes = {m: m.training for m in model.modules()}
    weights = [m.weight for m in layers.values()]
    grad_flags = [w.requires_grad for w in weights]
    for name, module in layers.items():
        handles.append(module.register_forward_hook(forward_hook(name)))
    try:
        model.eval()
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
                x = x.to(device, non_blocking=True)
                captured.clear()
                logits = model(x)
                if labels == "sample":
                    target = sample_labels(logits, generator)
                else:
                    if y is None:
                        raise ValueError("labels='true' needs (x, y) batches")
                    target = y.to(logits.device)
                loss = F.cross_entropy(logits, target)  # batch mean: gradients are (1/B) ∂ℓ_n/∂s
                torch.autograd.grad(loss, weights, allow_unused=True)  # fires the tensor hooks
                scale = float(logits.shape[0])
                for name, calls in captured.items():
                    for a, g in calls:
                        on_batch(name, layers[name], a, g * scale)
    finally:
        for h in handles:
            h.remove()
        for w, flag in zip(weights, grad_flags):
            w.requires_grad_(flag)
        for m, mode in modes.items():
            m.train(mode)


@dataclass
class KFactors:
    """K-FAC factors of one layer (float64): A (d_in[+1] square) and S (d_out square), per example."""

    A: Tensor
    S: Tensor
    examples: int
    patch: int = 1


def _kfac_sums(module: nn.Module, a: Tensor, ds: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Σ over the batch of the A and S terms with the normalisation of the module docstring (divided by N later)."""
    bias = module.bias is not None
    n = a.shape[0]
    if isinstance(module, nn.Conv2d):
        P = _patch(module)
        c_in = module.in_channels
        M = torch.zeros(c_in, c_in, dtype=dtype, device=a.device)
        v = torch.zeros(c_in, dtype=dtype, device=a.device)
        count = 0
        for crop in _offset_crops(module, a.to(dtype)):  # every (example, location) of offset p: one sample
            flat = crop.transpose(0, 1).reshape(c_in, -1)
            M += flat @ flat.T
            v += flat.sum(1)
            count += flat.shape[1]
        if bias:  # the constant 1/P appended to every channel vector
            A = torch.cat([torch.cat([M, v[:, None] / P], 1),
                           torch.cat([v / P, v.new_tensor([count / P ** 2])])[None, :]], 0)
        else:
            A = M
        A /= P
        g = ds.to(dtype).reshape(n, ds.shape[1], -1)  # (N, C_out, T)
        T = g.shape[-1]
        g = g.transpose(1, 2).reshape(-1, g.shape[1])
        return A, (g.T @ g) / T
    x = a.to(dtype).reshape(n, -1, a.shape[-1])  # (N, T, d_in); T = 1 for plain (N, d_in)
    T = x.shape[1]
    x = x.reshape(-1, x.shape[-1])
    if bias:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], 1)
    g = ds.to(dtype).reshape(-1, ds.shape[-1])
    return x.T @ x, (g.T @ g) / T


def collect_kfac(model: nn.Module, batches: Iterable, layers: Mapping[str, nn.Module] | Iterable[nn.Module], *,
                 device: torch.device | str, generator: torch.Generator | None, labels: str = "sample",
                 dtype: torch.dtype = torch.float64) -> dict[str, KFactors]:
    """K-FAC factors of each Linear/Conv2d in `layers` from one pass over `batches` ((x, y) pairs).

    `layers` maps names to modules (or is a list of modules, named as in model.named_modules()). The model
    runs in eval mode (restored afterwards); labels are sampled from its softmax with `generator`
    (``labels='true'`` gives the empirical Fisher). Layers that never ran with gradients are left out.
    Returns {name: KFactors} with float64 factors on the CPU.
    """
    if not isinstance(layers, Mapping):
        ids = {id(m) for m in layers}
        layers = {n: m for n, m in model.named_modules() if id(m) in ids}
    for name, m in layers.items():
        if not _is_scorable(m):
            raise ValueError(f"collect_kfac handles nn.Linear and nn.Conv2d (groups=1) layers; {name} is {m}")
    sums: dict[str, list] = {}

    def on_batch(name: str, module: nn.Module, a: Tensor, ds: Tensor) -> None:
        A, S = _kfac_sums(module, a, ds, dtype)
        if name not in sums:
            sums[name] = [A, S, 0]
        else:
            sums[name][0] += A
            sums[name][1] += S
        sums[name][2] += a.shape[0]

    _statistics_pass(model, batches, layers, device=device, generator=generator, labels=labels, on_batch=on_batch)
    return {name: KFactors((A / n).cpu(), (S / n).cpu(), n, _patch(layers[name]))
            for name, (A, S, n) in sums.items()}


# ----------------------------------------------------------------------------------------------------
# Eigenbasis, rotation and scores
# ----------------------------------------------------------------------------------------------------

@dataclass
class EigenBasis:
    """Eigendecompositions of a layer's factors: A = Q_A diag(λ_A) Q_Aᵀ, S = Q_S diag(λ_S) Q_Sᵀ."""

    q_a: Tensor
    lam_a: Tensor
    q_s: Tensor
    lam_s: Tensor
    patch: int = 1


@dataclass
class EigenScores:
    """W* (d_out, P, d_in') and the eigen-unit scores: rows (output directions), cols (input directions)."""

    w_star: Tensor
    rows: Tensor
    cols: Tensor


def eigen_basis(factors: KFactors, floor: float = EIG_FLOOR) -> EigenBasis:
    """eigh of both factors in float64; eigenvalues below `floor` (and negative round-off) set to 0."""
    lam_a, q_a = torch.linalg.eigh(factors.A.double())
    lam_s, q_s = torch.linalg.eigh(factors.S.double())
    lam_a = torch.where(lam_a > floor, lam_a, torch.zeros_like(lam_a))
    lam_s = torch.where(lam_s > floor, lam_s, torch.zeros_like(lam_s))
    return EigenBasis(q_a, lam_a, q_s, lam_s, factors.patch)


def layer_matrix(module: nn.Module) -> Tensor:
    """The layer's weights as (d_out, P, d_in[+1]) float64 on the CPU: per kernel offset p the matrix
    W_p (C_out × C_in) with the bias as an extra column copied to every offset (as the code does)."""
    w = module.weight.detach().double().cpu()
    if isinstance(module, nn.Conv2d):
        w = w.reshape(w.shape[0], w.shape[1], -1).permute(0, 2, 1)  # (C_out, P, C_in)
    else:
        w = w.unsqueeze(1)
    if module.bias is not None:
        b = module.bias.detach().double().cpu()
        w = torch.cat([w, b[:, None, None].expand(-1, w.shape[1], 1)], 2)
    return w


def rotate_and_score(w: Tensor, basis: EigenBasis) -> EigenScores:
    """W*_p = Q_Sᵀ W_p Q_A; I = Σ_p W*_p² ⊙ λ_S λ_Aᵀ; row and column sums of I."""
    w_star = torch.einsum("os,opi,ia->spa", basis.q_s, w.double(), basis.q_a)
    imp = (w_star.square() * basis.lam_s[:, None, None] * basis.lam_a[None, None, :]).sum(1)
    return EigenScores(w_star, imp.sum(1), imp.sum(0))


# ----------------------------------------------------------------------------------------------------
# Selection: one global threshold, a per-layer cap
# ----------------------------------------------------------------------------------------------------

def _keep_indices(values: Tensor, tau: Tensor, cap: float) -> Tensor:
    keep = values > tau
    n = values.numel()
    if n - int(keep.sum()) > cap * n:  # more than `cap` of the layer would go: its own cap-quantile
        t = values.sort().values[min(int(n * cap), n - 1)]
        keep = values > t
    if not bool(keep.any()):
        keep[int(values.argmax())] = True
    return keep.nonzero().squeeze(1)


def select(scores: Mapping[str, tuple[Tensor, Tensor]], ratio: float, cap: float) -> dict[str, tuple[Tensor, Tensor]]:
    """Kept (rows, cols) indices per layer from {name: (row scores, col scores)}.

    One global threshold τ = sorted(all rows and cols)[int(ratio · count)]; a unit is kept iff its score
    is > τ; a layer losing more than `cap` of its rows (or columns) uses its own cap-quantile instead;
    at least one row and one column are always kept.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must lie in [0, 1]; got {ratio}")
    if not 0.0 < cap <= 1.0:
        raise ValueError(f"cap must lie in (0, 1]; got {cap}")
    if not scores:
        return {}
    flat = torch.cat([torch.cat([c.double().reshape(-1), r.double().reshape(-1)]) for r, c in scores.values()])
    ordered = flat.sort().values
    tau = ordered[min(int(ratio * flat.numel()), flat.numel() - 1)]
    return {name: (_keep_indices(r.double(), tau, cap), _keep_indices(c.double(), tau, cap))
            for name, (r, c) in scores.items()}


def bottleneck_size(d_in: int, r_in: int, r_out: int, d_out: int, patch: int) -> int:
    """Parameters of a bottleneck: d_in'·r_in + r_out·r_in·P + d_out·r_out (d_in' counts the bias)."""
    return d_in * r_in + r_out * r_in * patch + d_out * r_out


# ----------------------------------------------------------------------------------------------------
# The rebuilt layer: rotate → core → rotate
# ----------------------------------------------------------------------------------------------------

class EigenBottleneck(nn.Module):
    """x ↦ Q_out · core(Q_inᵀ [x; c]): the rebuilt Linear/Conv2d of EigenDamage.

    q_in: (d_in[+1], r_in), q_out: (d_out, r_out) — trainable ``nn.Parameter`` s by default (frozen ones
    are buffers, still counted by bmrs.nn.measure.count_parameters). ``bias_input`` is the constant appended to
    the input when the original layer had a bias (1 for Linear, 1/P for Conv2d). For convs the input
    rotation is a 1×1 conv at the input resolution, the core a k×k conv with the original stride,
    dilation and padding (a conv with a bias pads its input before the rotation — ``pre_pad`` — so the
    constant channel is present in the border), the output rotation a 1×1 conv.
    """

    def __init__(self, q_in: Tensor, core: nn.Linear | nn.Conv2d, q_out: Tensor, *, bias_input: float | None,
                 pre_pad: tuple[int, int, int, int] | None = None, pad_mode: str = "zeros",
                 trainable: bool = True) -> None:
        super().__init__()
        self.kind = "conv" if isinstance(core, nn.Conv2d) else "linear"
        self.bias_input = bias_input
        self.pre_pad = tuple(pre_pad) if pre_pad is not None and any(pre_pad) else None
        self.pad_mode = pad_mode
        self.trainable = trainable
        self.core = core
        if trainable:
            self.q_in = nn.Parameter(q_in)
            self.q_out = nn.Parameter(q_out)
        else:
            self.register_buffer("q_in", q_in)
            self.register_buffer("q_out", q_out)

    # -- construction -----------------------------------------------------------------------------
    @staticmethod
    def _core_like(template: nn.Module, w: Tensor, *, pre_padded: bool) -> nn.Linear | nn.Conv2d:
        """A bias-free core with weight w (r_out, P, r_in) and the geometry of template."""
        r_out, _, r_in = w.shape
        ref = template.weight
        if isinstance(template, nn.Conv2d):
            kh, kw = template.kernel_size
            padding = 0 if pre_padded else template.padding
            core = nn.Conv2d(r_in, r_out, (kh, kw), stride=template.stride, padding=padding,
                             dilation=template.dilation, bias=False,
                             padding_mode="zeros" if pre_padded else template.padding_mode)
            weight = w.reshape(r_out, kh, kw, r_in).permute(0, 3, 1, 2)
        else:
            core = nn.Linear(r_in, r_out, bias=False)
            weight = w[:, 0, :]
        core = core.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            core.weight.copy_(weight)
        return core

    @classmethod
    def from_layer(cls, layer: nn.Linear | nn.Conv2d, basis: EigenBasis, w_star: Tensor, keep_out: Tensor,
                   keep_in: Tensor, *, trainable: bool = True) -> "EigenBottleneck":
        """Rebuild a dense layer from its eigenbasis, keeping rows keep_out and columns keep_in of W*."""
        if not _is_scorable(layer):
            raise ValueError(f"EigenBottleneck rebuilds nn.Linear or nn.Conv2d with groups=1; got {layer}")
        ref = layer.weight
        bias_input = None
        pre_pad = None
        pad_mode = "zeros"
        if layer.bias is not None:
            bias_input = 1.0 / _patch(layer) if isinstance(layer, nn.Conv2d) else 1.0
            if isinstance(layer, nn.Conv2d):
                pre_pad, pad_mode = _explicit_padding(layer), layer.padding_mode
        pre_padded = pre_pad is not None and any(pre_pad)
        core = cls._core_like(layer, w_star[keep_out][:, :, keep_in], pre_padded=pre_padded)
        as_ref = dict(device=ref.device, dtype=ref.dtype)
        return cls(basis.q_a[:, keep_in].to(**as_ref).contiguous(), core, basis.q_s[:, keep_out].to(**as_ref).contiguous(),
                   bias_input=bias_input, pre_pad=pre_pad, pad_mode=pad_mode, trainable=trainable)

    def merged(self, basis: EigenBasis, w_star: Tensor, keep_out: Tensor, keep_in: Tensor) -> "EigenBottleneck":
        """A new bottleneck after re-rotating the core by `basis` (fitted on the core) and pruning:
        Q_in ← Q_in Q'_A[:, K_in], Q_out ← Q_out Q'_S[:, K_out], core ← W'*[K_out, K_in] (the code's ``_merge_Qs``)."""
        ref = self.core.weight
        q_in = self.q_in.detach().double().cpu() @ basis.q_a[:, keep_in]
        q_out = self.q_out.detach().double().cpu() @ basis.q_s[:, keep_out]
        core = self._core_like(self.core, w_star[keep_out][:, :, keep_in], pre_padded=False)
        as_ref = dict(device=ref.device, dtype=ref.dtype)
        return type(self)(q_in.to(**as_ref).contiguous(), core, q_out.to(**as_ref).contiguous(),
                          bias_input=self.bias_input, pre_pad=self.pre_pad, pad_mode=self.pad_mode,
                          trainable=self.trainable)

    # -- use ----------------------------------------------------------------------------------------
    def counted_buffers(self) -> tuple[Tensor, ...]:
        """Frozen rotations are buffers but count as parameters (A.6): the hook of bmrs.nn.measure.count_parameters."""
        return () if self.trainable else (self.q_in, self.q_out)

    @property
    def num_params(self) -> int:
        return self.q_in.numel() + self.q_out.numel() + self.core.weight.numel()

    @property
    def ranks(self) -> tuple[int, int]:
        """(r_in, r_out)."""
        return self.q_in.shape[1], self.q_out.shape[1]

    def rotate_in(self, x: Tensor) -> Tensor:
        if self.kind == "linear":
            if self.bias_input is not None:
                x = torch.cat([x, x.new_full((*x.shape[:-1], 1), self.bias_input)], -1)
            return x @ self.q_in
        if self.bias_input is not None:
            if self.pre_pad is not None:
                x = _pad(x, self.pre_pad, self.pad_mode)
            x = torch.cat([x, x.new_full((x.shape[0], 1, *x.shape[2:]), self.bias_input)], 1)
        return F.conv2d(x, self.q_in.T[:, :, None, None])

    def rotate_out(self, h: Tensor) -> Tensor:
        if self.kind == "linear":
            return h @ self.q_out.T
        return F.conv2d(h, self.q_out[:, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return self.rotate_out(self.core(self.rotate_in(x)))

    def extra_repr(self) -> str:
        r_in, r_out = self.ranks
        return (f"{self.kind}: {self.q_in.shape[0]} -> {r_in} -> {r_out} -> {self.q_out.shape[0]}, "
                f"bias_input={self.bias_input}, trainable={self.trainable}")


# ----------------------------------------------------------------------------------------------------
# Model-level helpers
# ----------------------------------------------------------------------------------------------------

def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers EigenDamage scores: every Linear/Conv2d (groups=1) except the classifier (the last
    Linear/Conv in module order), and the core of every EigenBottleneck (iterative rounds)."""
    found: list[tuple[str, nn.Module, bool]] = []  # (name, layer, is a bottleneck core)
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(m, EigenBottleneck):
            inside.append(name)
            found.append((f"{name}.core", m.core, True))
        elif isinstance(m, (nn.Linear, nn.Conv2d)):
            found.append((name, m, False))
    if found and not found[-1][2]:
        found = found[:-1]  # the classifier is never pruned
    return {n: m for n, m, _ in found if _is_scorable(m)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _owner(model: nn.Module, name: str) -> tuple[str, EigenBottleneck | None]:
    """For a target name: (name of the module to replace, the bottleneck that owns it or None)."""
    parent_name, _, child = name.rpartition(".")
    if child == "core" and parent_name:
        parent = model.get_submodule(parent_name)
        if isinstance(parent, EigenBottleneck):
            return parent_name, parent
    return name, None


def _train_split(data):
    return getattr(data, "train", data)


def _batches(split, batch_size: int, generator: torch.Generator, limit: int | None):

    it = iterate_batches(split, batch_size, shuffle=True, generator=generator)
    return itertools.islice(it, limit) if limit is not None else it


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, *, device: torch.device | str, batch_size: int = 128,
                   n_batches: int | None = None, reset: bool = False, seed: int = 0) -> nn.Module:
    """Re-estimate BatchNorm running statistics with forward passes over the training split (the code's ``stablize_bn``).

    Only the BatchNorm layers run in train mode (no optimiser step); everything else stays in eval mode.
    ``reset=True`` starts from cleared statistics and uses exact cumulative averages. A model without
    BatchNorm is returned unchanged.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    try:
        model.eval()
        for bn in bns:
            bn.train()
            if reset:
                bn.reset_running_stats()
                bn.momentum = None
        for x, _ in _batches(_train_split(data), batch_size, torch.Generator().manual_seed(seed), n_batches):
            model(x.to(device, non_blocking=True))
    finally:
        for bn, mom in momenta.items():
            bn.momentum = mom
        for m, mode in modes.items():
            m.train(mode)
    return model


# ----------------------------------------------------------------------------------------------------
# EigenDamage
# ----------------------------------------------------------------------------------------------------

@dataclass
class EigenDamage:
    """EigenDamage pruning (Wang et al., 2019): fit once, then prune to any ratio (or run the iterative schedule).

    batch_size: statistics batch size (128 as for VGG in the code); n_batches: use only the first batches
    of a seeded shuffle (None = one full pass); trainable_rotations: rotations are nn.Parameters (the
    configs' fix_rotation: false); labels: 'sample' (true Fisher, the code's setting) or 'true'.
    """

    batch_size: int = 128
    n_batches: int | None = None
    eig_floor: float = EIG_FLOOR
    trainable_rotations: bool = True
    labels: str = "sample"
    name: str = "EigenDamage"
    bases: dict[str, EigenBasis] = field(default_factory=dict, repr=False)
    scores: dict[str, EigenScores] = field(default_factory=dict, repr=False)
    last_summary: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def variant(self) -> dict[str, Any]:
        """The settings to record in results."""
        return {"method": "eigendamage", "fisher": "true" if self.labels == "sample" else "empirical",
                "conv_factor": "channel (patch) A_c", "trainable_rotations": self.trainable_rotations,
                "stat_batches": self.n_batches, "stat_batch_size": self.batch_size, "eig_floor": self.eig_floor}

    def fit(self, model: nn.Module, data, *, device: torch.device | str, seed: int,
            n_batches: int | None = None) -> "EigenDamage":
        """K-FAC statistics over the training split, eigenbases, and the scores of the current weights."""
        if any(True for _ in noise_layers(model)):
            raise ValueError("EigenDamage works on a plain network; call fold_noise(model) on a BMRS network first")
        targets = prunable_layers(model)
        if not targets:
            raise ValueError(f"{type(model).__name__} has no Linear/Conv2d layer to score besides the classifier")
        limit = n_batches if n_batches is not None else self.n_batches
        batches = _batches(_train_split(data), self.batch_size, torch.Generator().manual_seed(seed), limit)
        factors = collect_kfac(model, batches, targets, device=device,
                               generator=torch.Generator().manual_seed(seed + 1), labels=self.labels)
        if not factors:
            raise ValueError("no statistics were collected (empty data or no layer reached by the forward pass)")
        self.bases = {name: eigen_basis(f, self.eig_floor) for name, f in factors.items()}
        self.scores = self.layer_scores(model)
        return self

    def layer_scores(self, model: nn.Module) -> dict[str, EigenScores]:
        """W* and row/column scores of model's current weights in the fitted eigenbases."""
        if not self.bases:
            raise RuntimeError("call EigenDamage.fit(model, data, device=..., seed=...) first")
        targets = prunable_layers(model)
        missing = [n for n in self.bases if n not in targets]
        if missing:
            raise ValueError(f"the model has no layers {missing} that were fitted; fit it on this model")
        return {name: rotate_and_score(layer_matrix(targets[name]), basis) for name, basis in self.bases.items()}

    def prune(self, model: nn.Module, ratio: float, *, cap: float = 0.95) -> nn.Module:
        """A new model (deep copy) with the eigen-units below the global threshold removed.

        Layers whose bottleneck would not be smaller stay as they are; ``last_summary`` records per layer
        the kept rows/columns, whether it was rebuilt and its parameters before and after.
        """
        new = copy.deepcopy(model)
        targets = prunable_layers(new)
        scored = self.layer_scores(new)
        keep = select({n: (s.rows, s.cols) for n, s in scored.items()}, ratio, cap)
        summary: dict[str, dict[str, Any]] = {}
        for name, (k_out, k_in) in keep.items():
            module = targets[name]
            basis, w_star = self.bases[name], scored[name].w_star
            owner_name, bottleneck = _owner(new, name)
            d_out, patch, d_in = w_star.shape
            if bottleneck is not None:
                before = bottleneck.num_params
                d_in, d_out = bottleneck.q_in.shape[0], bottleneck.q_out.shape[0]
            else:
                before = module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
            after = bottleneck_size(d_in, k_in.numel(), k_out.numel(), d_out, patch)
            rebuilt = after <= before
            if rebuilt:
                if bottleneck is not None:
                    replacement = bottleneck.merged(basis, w_star, k_out, k_in)
                else:
                    replacement = EigenBottleneck.from_layer(module, basis, w_star, k_out, k_in,
                                                             trainable=self.trainable_rotations)
                _set_submodule(new, owner_name, replacement)
            summary[name] = {"rows_kept": k_out.numel(), "rows": w_star.shape[0], "cols_kept": k_in.numel(),
                             "cols": w_star.shape[2], "rebuilt": rebuilt, "params_before": before,
                             "params_after": after if rebuilt else before}
        self.last_summary = summary
        return new

    def eigen_units(self) -> tuple[int, int]:
        """(eigen-units kept, eigen-units scored) of the last prune; dense-kept layers keep all."""
        kept = total = 0
        for s in self.last_summary.values():
            total += s["rows"] + s["cols"]
            kept += (s["rows_kept"] + s["cols_kept"]) if s["rebuilt"] else (s["rows"] + s["cols"])
        return kept, total

    def iterative(self, model: nn.Module, data, rounds: int, ratio: float = 0.5, cap: float = 0.5,
                  finetune: Callable[[nn.Module, int], Any] | None = None, *, device: torch.device | str,
                  seed: int, evaluate: Callable[[nn.Module, int], Mapping[str, Any]] | None = None,
                  recalibrate: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
        """The iterative schedule (``main_prune.py``): `rounds` × [fit on the current model (cores of already rebuilt
        layers), prune `ratio` of the current eigen-units with per-layer `cap` (new bases merged into the
        old rotations), finetune(model, round) (may return a replacement model), BN recalibration,
        evaluate(model, round) (a dict merged into the round's record)]. Returns the final model and one
        record per round."""
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1; got {rounds}")
        current = model
        history: list[dict[str, Any]] = []
        for k in range(rounds):
            self.fit(current, data, device=device, seed=seed + k)
            current = self.prune(current, ratio, cap=cap)
            kept, total = self.eigen_units()
            record: dict[str, Any] = {"round": k + 1, "params": count_parameters(current),
                                      "eigen_units_kept": kept, "eigen_units_scored": total}
            if finetune is not None:
                out = finetune(current, k)
                if isinstance(out, nn.Module):
                    current = out
            if recalibrate:
                recalibrate_bn(current, data, device=device, batch_size=self.batch_size, seed=seed + k)
            if evaluate is not None:
                record.update(evaluate(current, k))
            history.append(record)
        return current, history


# ----------------------------------------------------------------------------------------------------
# C-OBD (pruner/fisher_diag_pruner.py): diagonal Fisher OBD scores of the BMRS units
# ----------------------------------------------------------------------------------------------------

def _diag_fisher_sums(module: nn.Module, a: Tensor, ds: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Σ_n of the squared exact per-example gradients of weight and bias (closed forms)."""
    n = a.shape[0]
    w = module.weight
    fb = torch.zeros(w.shape[0], dtype=dtype, device=a.device) if module.bias is not None else None
    if isinstance(module, nn.Conv2d):
        c_out, c_in, P = w.shape[0], module.in_channels, _patch(module)
        fw = torch.zeros(c_out, c_in, P, dtype=dtype, device=a.device)
        for sl in _chunks(n, c_out * c_in):
            x = a[sl].to(dtype)
            g = ds[sl].to(dtype).reshape(x.shape[0], c_out, -1)  # (n, C_out, T)
            for p, crop in enumerate(_offset_crops(module, x)):  # per-example gradient of offset p
                fw[:, :, p] += torch.einsum("not,nct->noc", g, crop.reshape(x.shape[0], c_in, -1)).square().sum(0)
            if fb is not None:
                fb += g.sum(-1).square().sum(0)
        return fw.reshape(c_out, -1), fb
    fw = torch.zeros(w.shape[0], w.shape[1], dtype=dtype, device=a.device)
    for sl in _chunks(n, w.numel()):
        x = a[sl].to(dtype).reshape(a[sl].shape[0], -1, a.shape[-1])  # (n, T, d_in)
        g = ds[sl].to(dtype).reshape(x.shape[0], -1, ds.shape[-1])  # (n, T, d_out)
        fw += torch.einsum("nto,nti->noi", g, x).square().sum(0)
        if fb is not None:
            fb += g.sum(1).square().sum(0)
    return fw, fb


class COBD(Criterion):
    """C-OBD (``pruner/fisher_diag_pruner.py``): score of a unit = Σ over its producer row (bias included) of θ_q² F_qq, with the
    diagonal true Fisher F from exact per-example gradients. Smaller = pruned first.

    max_batches: use only the first batches of a seeded shuffle of the training split (None = one full
    pass); batch_size 64 as in the code; labels 'sample' (true Fisher) or 'true' (empirical Fisher).
    """

    name = "C-OBD"
    ascending = True

    def __init__(self, *, max_batches: int | None = None, batch_size: int = 64, labels: str = "sample") -> None:
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.labels = labels
        self.fisher: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._params: dict[str, Tensor] = {}

    @property
    def needs_graph(self) -> bool:
        return True

    def fit(self, model: nn.Module, data, *, device: torch.device, seed: int) -> None:
        groups = trace_unit_groups(model)
        by_weight = {id(m.weight): m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        layers: dict[str, nn.Module] = {}
        for g in groups:
            module = by_weight.get(id(g.producer_weight)) if g.producer_weight is not None else None
            if module is None or not _is_scorable(module):
                raise ValueError(
                    f"C-OBD needs an nn.Linear/nn.Conv2d (groups=1) module producing the units of {g.name}; "
                    f"found {g.producer_name!r}"
                )
            layers[g.producer_name] = module
        sums: dict[str, list] = {}

        def on_batch(name: str, module: nn.Module, a: Tensor, ds: Tensor) -> None:
            fw, fb = _diag_fisher_sums(module, a, ds, torch.float64)
            if name not in sums:
                sums[name] = [fw, fb, 0]
            else:
                sums[name][0] += fw
                if fb is not None:
                    sums[name][1] += fb
            sums[name][2] += a.shape[0]

        batches = _batches(_train_split(data), self.batch_size, torch.Generator().manual_seed(seed), self.max_batches)
        _statistics_pass(model, batches, layers, device=device, generator=torch.Generator().manual_seed(seed + 1),
                         labels=self.labels, on_batch=on_batch)
        missing = [n for n in layers if n not in sums]
        if missing:
            raise ValueError(f"C-OBD collected no gradients for {missing}; are these layers called as modules?")
        self.fisher = {name: ((fw / n).reshape(layers[name].weight.shape).cpu(),
                              None if fb is None else (fb / n).cpu()) for name, (fw, fb, n) in sums.items()}

    def scores(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, Tensor]:
        self._params = dict(model.named_parameters())
        try:
            return super().scores(model, example_input)
        finally:
            self._params = {}

    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        if not self.fisher:
            raise RuntimeError("C-OBD needs its Fisher: call fit(model, data, device=..., seed=...) first")
        if group is None or group.producer_name not in self.fisher:
            raise ValueError(f"C-OBD has no Fisher for the producer of a layer with {layer.num_units} units; refit")
        fw, fb = self.fisher[group.producer_name]
        w = group.producer_weight.detach().double().cpu()
        score = (w.square() * fw).reshape(w.shape[0], -1).sum(1)
        bias = self._params.get(group.producer_name.removesuffix("weight") + "bias")
        if bias is not None and fb is not None:
            score = score + bias.detach().double().cpu().square() * fb
        return score


__all__ = [
    "COBD", "EigenBasis", "EigenBottleneck", "EigenDamage", "EigenScores", "KFactors", "bottleneck_size",
    "collect_kfac", "eigen_basis", "fold_noise", "layer_matrix",
    "prunable_layers", "recalibrate_bn", "rotate_and_score", "sample_labels", "select",
]
