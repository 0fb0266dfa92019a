"""Grouped norms and the update-to-weight ratio against plain concatenate-and-measure references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_stability.functional import foreach_norms, group_norms, group_parameters, update_to_weight_ratio

NORM_TYPES = st.sampled_from([1.0, 2.0, 3.0, math.inf])


@st.composite
def grouped_tensors(draw: st.DrawFn) -> tuple[list[torch.Tensor], list[int], int]:
    num_groups = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=6))
    groups = [draw(st.integers(0, num_groups - 1)) for _ in sizes]
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(size, generator=generator) * 10 ** draw(st.integers(-3, 3)) for size in sizes]
    return tensors, groups, num_groups


def _reference(
    tensors: list[torch.Tensor], groups: list[int], num_groups: int, norm_type: float
) -> list[float]:
    out = []
    for g in range(num_groups):
        members = [t for t, i in zip(tensors, groups, strict=True) if i == g]
        out.append(torch.linalg.vector_norm(torch.cat(members), norm_type).item() if members else 0.0)
    return out


@settings(max_examples=30, deadline=None)
@given(grouped_tensors(), NORM_TYPES)
def test_group_norms_equal_norm_of_concatenated_members(data, norm_type: float) -> None:
    tensors, groups, num_groups = data
    got = group_norms(foreach_norms(tensors, norm_type), groups, num_groups, norm_type)
    assert got.shape == (num_groups,)
    assert got.tolist() == pytest.approx(_reference(tensors, groups, num_groups, norm_type), rel=1e-4)


@settings(max_examples=20, deadline=None)
@given(grouped_tensors(), st.integers(0, 2**16))
def test_update_ratio_matches_reference(data, seed: int) -> None:
    before, groups, num_groups = data
    generator = torch.Generator().manual_seed(seed)
    after = [w + 0.1 * torch.randn(w.shape, generator=generator) for w in before]
    got = update_to_weight_ratio(before, after, groups, num_groups)
    deltas = _reference([a - b for a, b in zip(after, before, strict=True)], groups, num_groups, 2.0)
    weights = _reference(before, groups, num_groups, 2.0)
    for value, delta, weight in zip(got.tolist(), deltas, weights, strict=True):
        if weight == 0.0:
            assert math.isnan(value)  # an empty group: 0 / 0
        else:
            assert value == pytest.approx(delta / weight, rel=1e-4)


def test_update_ratio_of_zero_weights_is_inf() -> None:
    ratio = update_to_weight_ratio([torch.zeros(2)], [torch.ones(2)], [0], 1)
    assert ratio.tolist() == [math.inf]


def test_group_parameters_granularities() -> None:
    names = ["encoder.rnn.weight_hh_l0", "encoder.rnn.bias_hh_l0", "head.weight", "scale"]
    assert group_parameters(names, "module") == (["encoder.rnn.l0", "head", "root"], [0, 0, 1, 2])
    assert group_parameters(names, "parameter") == (names, [0, 1, 2, 3])
    assert group_parameters(names, "total") == (["total"], [0, 0, 0, 0])


def test_module_groups_split_a_recurrent_module_per_layer_and_direction() -> None:
    from rnn_stability.nn import LSTM, GRUCell

    model = torch.nn.Module()
    model.rnn = LSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2, layer_norm=True)
    model.cell = GRUCell(2, 3, layer_norm=True)
    model.plain = torch.nn.GRU(2, 3)
    model.head = torch.nn.Linear(3, 1)
    names = [name for name, _ in model.named_parameters()]
    groups, index = group_parameters(names, "module")
    assert groups == ["rnn.l0", "rnn.l0_reverse", "rnn.l1", "rnn.l1_reverse", "cell", "plain.l0", "head"]
    members = {
        group: [n for n, i in zip(names, index, strict=True) if groups[i] == group] for group in groups
    }
    # each layer's weights, biases, projection and layer norms in one group, nothing left over
    layer = [n for n in names if n.startswith("rnn.") and ("_l1_reverse." in n or n.endswith("_l1_reverse"))]
    assert members["rnn.l1_reverse"] == layer
    assert any("norm" in n for n in layer) and "rnn.weight_hr_l1_reverse" in layer
    assert members["cell"] == [n for n in names if n.startswith("cell.")]
    # a model that is itself a recurrent module
    assert group_parameters(["weight_ih_l0", "weight_hh_l1"], "module")[0] == ["l0", "l1"]


def test_empty_inputs_give_zero_groups() -> None:
    assert group_norms([], [], 3).tolist() == [0.0, 0.0, 0.0]
    assert update_to_weight_ratio([], [], [], 2).tolist() == [0.0, 0.0]


def test_nonfinite_norms_propagate() -> None:
    norms = [torch.tensor(math.nan), torch.tensor(1.0), torch.tensor(math.inf)]
    got = group_norms(norms, [0, 1, 1], 2).tolist()
    assert math.isnan(got[0]) and got[1] == math.inf


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: group_parameters(["a"], "layer"), "granularity"),
        (lambda: group_norms([torch.tensor(1.0)], [0, 1], 2), "groups"),
        (lambda: group_norms([torch.tensor(1.0)], [0], -1), "num_groups"),
        (lambda: group_norms([torch.tensor(1.0)], [0], 1, norm_type=0.0), "norm_type"),
        (lambda: update_to_weight_ratio([torch.ones(1)], [], [0], 1), "before"),
    ],
)
def test_invalid_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
