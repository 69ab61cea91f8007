"""Pruning criteria, traced unit groups and the paper's compression metric."""

from __future__ import annotations

import math

import pytest
import torch

from bmrs.core import distributions as dist
from bmrs.prune.criteria import (BMRSN, BMRSU, L2, SNR, ExpectedTheta, apply_criterion, global_keep_masks,
                           prune_to_fraction, threshold_table)
from bmrs.prune.registry import make_criterion
from bmrs.nn.graph import trace_unit_groups
from bmrs.nn.paper_metric import paper_compression
from bmrs.nn.models import lenet5, mlp, resnet, vit
from bmrs.nn.noise import noise_layers
from bmrs.core.reduction import delta_f_bmrs_n, delta_f_bmrs_u


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in noise_layers(model):
            layer.mu.copy_(torch.rand(layer.num_units, generator=g) * 24 - 22)
            layer.log_sigma.copy_(torch.rand(layer.num_units, generator=g) * 8 - 6)


def test_producers_and_consumers_of_lenet5_are_traced():
    groups = trace_unit_groups(lenet5(1))
    assert [(g.producer_name, [(n, b) for n, _, b in g.consumers]) for g in groups] == [
        ("0.weight", [("4.weight", 1)]),
        ("4.weight", [("9.weight", 25)]),  # 16 channels x 5x5 flattened into fc1's 400 inputs
        ("9.weight", [("12.weight", 1)]),
        ("12.weight", [("15.weight", 1)]),
    ]


def test_producers_are_found_in_resnet_and_vit_including_functional_attention_weights():
    r = resnet(18, 10, image_size=32)
    groups = trace_unit_groups(r)
    assert len(groups) == 20 and all(g.producer_weight is not None for g in groups)
    assert {g.name: g.producer_name for g in groups}["net.layer2.0.downsample.1.noise"] == "net.layer2.0.downsample.0.weight"
    v = vit(10, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    names = [g.producer_name for g in trace_unit_groups(v)]
    assert names[0].endswith("self_attention.attention.out_proj.weight")  # used functionally by MHA
    assert names[1].endswith("mlp.3.weight")


def test_scores_match_the_closed_forms():
    model = lenet5(1)
    _randomise(model)
    layer = dict(noise_layers(model))["6"]
    mu, sigma = layer.mu.detach().double(), layer.sigma.detach().double()
    torch.testing.assert_close(ExpectedTheta().scores(model)["6"], dist.expected_theta(mu, sigma))
    torch.testing.assert_close(SNR().scores(model)["6"], dist.snr(mu, sigma))
    torch.testing.assert_close(BMRSN().scores(model)["6"], delta_f_bmrs_n(mu, sigma))
    torch.testing.assert_close(BMRSN(include_2pi=False).scores(model)["6"],
                               delta_f_bmrs_n(mu, sigma) + 0.5 * math.log(2 * math.pi))
    # BMRS_U clamps mu to [a, b] as the released code does
    torch.testing.assert_close(BMRSU(p1=4).scores(model)["6"], delta_f_bmrs_u(mu.clamp(-20, 0), sigma, p1=4))
    w = model[4].weight.detach().double()
    torch.testing.assert_close(L2().scores(model)["6"], w.reshape(16, -1).norm(dim=1))


#: Posteriors (μ, log σ) whose verdict under each rule is known without the library (x = log θ on [−20, 0]):
#: 0. μ = 0, σ = e⁻⁵: θ ≈ 1 and sharp. E[θ] ≈ 1, SNR ≈ 1/σ ≈ 148, no density at log θ = −20, no mass below 2⁻⁴: all keep.
#: 1. μ = −10, σ = e⁻⁵: θ ≈ e⁻¹⁰ ≈ 4.5e-5 (E[θ] prunes) but sharp (SNR keeps); the mass sits inside
#:    [2⁻²³, 2⁻⁸] = [e^−15.9, e^−5.5]: both BMRS_U prune; no density at −20: BMRS_N keeps.
#: 2. μ = −20, σ = e^0.5: half a normal above the lower bound: E[θ] ≈ 7.4 e⁻²⁰, SNR ≈ 0.37 (both prune);
#:    (b − a)·q_x(a) = 20 · φ(0)/(σ · ½) ≈ 9.7 ≥ 1: BMRS_N prunes (Eq. 8 and the code alike); mass in
#:    [2⁻²³, 2⁻ᵖ¹] only P(|z| > 4.06/σ) ≈ 0.014, below 0.52 and 0.66: both BMRS_U keep.
#: 3. μ = −4, σ = e⁻⁵: θ ≈ e⁻⁴ ≈ 0.018 ≤ 0.1 (E[θ] prunes), sharp (SNR keeps); −4 lies inside [−15.9, −2.8] (p1 = 4,
#:    prune) but above −5.5 (p1 = 8, keep); BMRS_N keeps.
#: 4. μ = −30, σ = 1: far below the support, so q piles up at log θ = −20 as an exponential with rate 10:
#:    (b − a)·q_x(a) ≈ 20 · 10 = 200 (BMRS_N prunes), E[θ] ≈ 1.1 e⁻²⁰ (prunes), but θ/e⁻²⁰ has SNR ≈ 9 (keeps);
#:    the released code clamps μ to −20 for BMRS_U: mass above −15.9 is P(|z| > 4.06) ≈ 5e-5: both keep.
#: 5. μ = −16.2, σ = 2: (b − a)·q_x(a) = 20 · φ(1.9)/(2 Φ(1.9)) ≈ 0.68, between 1/√(2π) ≈ 0.40 and 1: Eq. 8
#:    keeps (ΔF ≈ log 0.68 < 0), the code's variant (+0.919) prunes; E[θ] ≈ e⁻¹⁶ and SNR ≈ 0.14 prune; the
#:    mass in [2⁻²³, 2⁻ᵖ¹] ≈ 0.46 is below both BMRS_U thresholds: keep.
KNOWN_POSTERIORS = [(0.0, -5.0), (-10.0, -5.0), (-20.0, 0.5), (-4.0, -5.0), (-30.0, 0.0), (-16.2, math.log(2.0))]
KNOWN_KEEP = {  # 1 = kept, 0 = pruned, unit by unit
    "etheta": [1, 0, 0, 0, 0, 0],
    "snr": [1, 1, 0, 1, 1, 0],
    "bmrs_n": [1, 1, 0, 1, 0, 1],
    "bmrs_n_code": [1, 1, 0, 1, 0, 0],
    "bmrs_u8": [1, 0, 1, 1, 1, 1],
    "bmrs_u4": [1, 0, 1, 0, 1, 1],
}


@pytest.mark.parametrize("name, criterion", [("etheta", ExpectedTheta()), ("snr", SNR()), ("bmrs_n", BMRSN()),
                                             ("bmrs_n_code", BMRSN(include_2pi=False)), ("bmrs_u8", BMRSU(p1=8)),
                                             ("bmrs_u4", BMRSU(p1=4))], ids=lambda v: v if isinstance(v, str) else "")
def test_fixed_rules_prune_exactly_where_the_paper_says(name, criterion):
    model = mlp((1, 8, 8), hidden=len(KNOWN_POSTERIORS), n_layers=0)
    (_, layer), = noise_layers(model)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor([m for m, _ in KNOWN_POSTERIORS]))
        layer.log_sigma.copy_(torch.tensor([s for _, s in KNOWN_POSTERIORS]))
    result = apply_criterion(model, criterion)
    assert layer.mask.tolist() == KNOWN_KEEP[name]
    assert result.units_kept == sum(KNOWN_KEEP[name]) and result.units_total == len(KNOWN_POSTERIORS)


def test_masks_are_recomputed_from_scratch():
    model = mlp((1, 8, 8), hidden=20, n_layers=0)
    layer = dict(noise_layers(model))["3"]
    layer.mask.zero_()
    apply_criterion(model, SNR())  # at init SNR is ~247 for every unit: all kept again
    assert layer.mask.all()


def test_global_fraction_prunes_the_least_important_across_layers_and_respects_bmrs_stops():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0]), "b": torch.tensor([2.0, 4.0])}
    keep = global_keep_masks(scores, SNR(), 0.4)
    assert keep["a"].tolist() == [True, False, True] and keep["b"].tolist() == [False, True]
    df = {"a": torch.tensor([-1.0, 2.0, 0.5]), "b": torch.tensor([-3.0, 1.0])}
    keep = global_keep_masks(df, BMRSN(), 1.0)  # asks for everything, BMRS stops at dF < 0
    assert keep["a"].tolist() == [True, False, False] and keep["b"].tolist() == [True, False]
    keep = global_keep_masks(df, BMRSN(), 0.2)  # the largest dF goes first
    assert keep["a"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\]"):
        global_keep_masks(scores, SNR(), 1.5)


def test_l2_prunes_to_a_fraction_and_has_no_fixed_rule():
    model = lenet5(1)
    result = prune_to_fraction(model, L2(), 0.25)
    assert result.units_total == 226 and result.units_kept == 226 - round(0.25 * 226)
    with pytest.raises(NotImplementedError, match="target fraction"):
        apply_criterion(model, L2())


def test_make_criterion_names_and_errors():
    assert make_criterion("bmrs_u4").p1 == 4 and make_criterion("bmrs_u6").name == "BMRS_U-6"
    assert make_criterion("bmrs_n_code").include_2pi is False
    with pytest.raises(ValueError, match="unknown criterion 'foo'; valid: l2, etheta"):
        make_criterion("foo")
    with pytest.raises(ValueError, match="p1 < p2"):
        BMRSU(p1=23)


def test_threshold_table_is_the_spec_table():
    expected = {16: 0.2426, 12: 0.3812, 11: 0.4159, 8: 0.5199, 6: 0.5892, 4: 0.6585, 2: 0.7278, 1: 0.7625}
    assert {k: round(v, 4) for k, v in threshold_table().items()} == expected


def test_scoring_a_model_without_noise_layers_is_an_error():
    with pytest.raises(ValueError, match="no MultiplicativeNoise layers"):
        SNR().scores(lenet5(1, noise=False))


def test_paper_compression_counts_rows_columns_and_noise_parameters_once():
    model = lenet5(1)
    layers = dict(noise_layers(model))
    layers["2"].mask[0] = 0  # one conv1 channel: 2 noise params + 1*5*5 filter + 16*5*5 conv2 "column"
    comp = paper_compression(model)
    assert comp.params_total == 62158 and comp.units_pruned == 1
    assert comp.params_removed == 2 + 25 + 400
    layers["6"].mask[3] = 0  # one conv2 channel: 2 + its 6*5*5 filter minus the 25 entries already removed;
    comp = paper_compression(model)  # its 25 fc1 columns are NOT counted (shapes do not line up: the released code's rule)
    assert comp.params_removed == (2 + 25 + 400) + (2 + 150 - 25)
    layers["11"].mask[0] = 0  # one fc1 unit: its row (400) + 84 fc2 entries
    comp = paper_compression(model)
    assert comp.params_removed == (2 + 25 + 400) + (2 + 150 - 25) + (2 + 400 + 84)
    assert comp.structure_pct == pytest.approx(100 * 3 / 226)


def test_paper_compression_undercounts_lenet5_where_compact_counts_exactly():
    """The paper's rule skips the fc1 columns of pruned conv2 channels; the shrunk network drops them."""
    from bmrs.nn.measure import count_parameters
    from bmrs.nn.shrink import shrink

    model = lenet5(1)
    layers = dict(noise_layers(model))
    layers["6"].mask[:8] = 0  # half of conv2's channels
    comp = paper_compression(model)
    plain = 61706  # LeNet5 without noise parameters
    removed_exactly = plain - count_parameters(shrink(model))
    assert removed_exactly - (comp.params_removed - 2 * 8) == 8 * 25 * 120 + 8  # fc1 columns + conv2 biases


def test_paper_compression_of_the_mlp_matches_a_hand_count():
    model = mlp((1, 32, 32), hidden=150, n_layers=1)
    layers = dict(noise_layers(model))
    layers["3"].mask[:10] = 0
    layers["6"].mask[:5] = 0
    comp = paper_compression(model)
    # layer-1 rows 10*1024, layer-2 columns 10*150 and rows 5*150 (overlap 10*5), head columns 5*10
    assert comp.params_removed == 2 * 15 + 10 * 1024 + 10 * 150 + 5 * 150 - 10 * 5 + 5 * 10
