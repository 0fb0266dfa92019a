"""Bad input to every public constructor and function raises a TypeError or ValueError naming the parameter.

`ROWS` is the table: one row per bad call, for every public callable of `rnn_stability.nn`, `.functional` and
`.callbacks` (a test walks their `__all__`, so a new public name fails until it has a row here, or an entry in
`EXEMPT` saying why it takes no bad input). The error table of the docs (`docs/guide/errors.md`) is checked
against the same calls: each raised message contains a pattern documented for that name, and each documented
pattern is raised by some row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

import rnn_stability.callbacks as C
import rnn_stability.functional as F
import rnn_stability.nn as N

ERRORS_PAGE = Path(__file__).parent.parent / "docs" / "guide" / "errors.md"


class Row(NamedTuple):
    name: str  # the public name, as in its package's `__all__`
    case: str
    call: Callable[[], Any]
    error: type[Exception]
    names: str  # the substring of the message that names the parameter


def _param(grad: torch.Tensor | None = None) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, -2.0, 3.0]) if grad is None else grad
    return p


def _lstm() -> nn.LSTM:
    return nn.LSTM(2, 3)


# fmt: off
# One row per line, as a table reads (the formatter would spread each over six lines).
ROWS: list[Row] = [
    # rnn_stability.nn
    Row("LSTM", "hidden_size=0", lambda: N.LSTM(2, 0), ValueError, "hidden_size"),
    Row("LSTM", "dropout=2", lambda: N.LSTM(2, 3, dropout=2.0), ValueError, "dropout"),
    Row("LSTM", "layer_norm int", lambda: N.LSTM(2, 3, layer_norm=3), TypeError, "`layer_norm`"),
    Row("LSTM", "residual string", lambda: N.LSTM(2, 3, residual="no"), TypeError, "`residual`"),
    Row("LSTM", "weight_dropout=1", lambda: N.LSTM(2, 3, weight_dropout=1.0), ValueError, "`weight_dropout`"),
    Row("LSTM", "recurrent_dropout string", lambda: N.LSTM(2, 3, recurrent_dropout="0.1"), TypeError, "`recurrent_dropout`"),
    Row("LSTM", "zoneout triple", lambda: N.LSTM(2, 3, zoneout=(0.1, 0.1, 0.1)), TypeError, "`zoneout`"),
    Row("LSTM", "batch_norm with separate", lambda: N.LSTM(2, 3, batch_norm=True, layer_norm=True), ValueError, "`batch_norm`"),
    Row("GRU", "input_dropout=-0.1", lambda: N.GRU(2, 3, input_dropout=-0.1), ValueError, "`input_dropout`"),
    Row("GRU", "zoneout pair", lambda: N.GRU(2, 3, zoneout=(0.1, 0.2)), TypeError, "`zoneout`"),
    Row("GRU", "batch_norm int", lambda: N.GRU(2, 3, batch_norm=1), TypeError, "`batch_norm`"),
    Row("GRU", "dropout=-1", lambda: N.GRU(2, 3, dropout=-1.0), ValueError, "dropout"),
    Row("GRU", "residual string", lambda: N.GRU(2, 3, residual="no"), TypeError, "`residual`"),
    Row("GRU", "unknown keyword", lambda: N.GRU(2, 3, bogus=1), TypeError, "bogus"),
    Row("LSTMCell", "layer_norm int", lambda: N.LSTMCell(2, 3, layer_norm=3), TypeError, "`layer_norm`"),
    Row("GRUCell", "layer_norm int", lambda: N.GRUCell(2, 3, layer_norm=3), TypeError, "`layer_norm`"),
    Row("LSTMCell", "zoneout=1", lambda: N.LSTMCell(2, 3, zoneout=1.0), ValueError, "`zoneout`"),
    Row("GRUCell", "zoneout pair", lambda: N.GRUCell(2, 3, zoneout=(0.1, 0.2)), TypeError, "`zoneout`"),
    Row("GateLayerNorm", "eps=nan", lambda: N.GateLayerNorm(4, 3, eps=math.nan), ValueError, "`eps`"),
    Row("GateLayerNorm", "eps=0", lambda: N.GateLayerNorm(4, 3, eps=0.0), ValueError, "`eps`"),
    Row("GateLayerNorm", "eps string", lambda: N.GateLayerNorm(4, 3, eps="x"), TypeError, "`eps`"),
    Row("GateLayerNorm", "bool size", lambda: N.GateLayerNorm(4, True), TypeError, "`hidden_size`"),
    Row("GateLayerNorm", "num_gates=0", lambda: N.GateLayerNorm(0, 3), ValueError, "`num_gates`"),
    Row("gate_layer_norm", "eps=0", lambda: N.gate_layer_norm(torch.ones(1, 4), torch.ones(2, 2), 0.0), ValueError, "`eps`"),
    Row("gate_layer_norm", "eps<0", lambda: N.gate_layer_norm(torch.ones(1, 4), torch.ones(2, 2), -1.0), ValueError, "`eps`"),
    Row("gate_layer_norm", "eps=nan", lambda: N.gate_layer_norm(torch.ones(1, 4), torch.ones(2, 2), math.nan), ValueError, "`eps`"),
    Row("convert_rnn", "not a module", lambda: N.convert_rnn("x"), TypeError, "`module`"),
    Row("convert_rnn", "layer_norm int", lambda: N.convert_rnn(_lstm(), layer_norm=3), TypeError, "`layer_norm`"),
    Row("convert_rnn", "weight_dropout=2", lambda: N.convert_rnn(_lstm(), weight_dropout=2.0), ValueError, "`weight_dropout`"),
    # rnn_stability.functional: norms
    Row("foreach_norms", "strings", lambda: F.foreach_norms(["a"]), TypeError, "`tensors`"),
    Row("foreach_norms", "one 2-d tensor", lambda: F.foreach_norms(torch.ones(3, 2)), TypeError, "`tensors`"),
    Row("foreach_norms", "norm_type='fro'", lambda: F.foreach_norms([torch.ones(2)], "fro"), TypeError, "`norm_type`"),
    Row("foreach_norms", "norm_type=0", lambda: F.foreach_norms([torch.ones(2)], 0), ValueError, "`norm_type`"),
    Row("grad_norms", "strings", lambda: F.grad_norms(["a"]), TypeError, "`parameters`"),
    Row("grad_norms", "norm_type=-1", lambda: F.grad_norms([_param()], -1.0), ValueError, "`norm_type`"),
    Row("nonfinite_count", "strings", lambda: F.nonfinite_count(["a"]), TypeError, "`parameters`"),
    Row("total_grad_norm", "norm_type='fro'", lambda: F.total_grad_norm([_param()], "fro"), TypeError, "`norm_type`"),
    Row("total_norm", "strings", lambda: F.total_norm(["a"]), TypeError, "`norms`"),
    Row("total_norm", "norm_type=nan", lambda: F.total_norm([torch.tensor(1.0)], math.nan), ValueError, "`norm_type`"),
    Row("group_norms", "group out of range", lambda: F.group_norms([torch.tensor(1.0)], [3], 2), ValueError, "`groups`"),
    Row("group_norms", "num_groups<0", lambda: F.group_norms([torch.tensor(1.0)], [0], -1), ValueError, "`num_groups`"),
    Row("group_norms", "groups string", lambda: F.group_norms([torch.tensor(1.0)], "a", 1), TypeError, "`groups`"),
    Row("group_parameters", "one string", lambda: F.group_parameters("a.b"), TypeError, "`names`"),
    Row("group_parameters", "granularity", lambda: F.group_parameters(["a.b"], "layer"), ValueError, "`granularity`"),
    Row("update_to_weight_ratio", "lengths differ", lambda: F.update_to_weight_ratio([torch.ones(1)], [], [0], 1), ValueError, "`before`"),
    # clipping
    Row("clip_grad_norm_", "max_norm tensor < 0", lambda: F.clip_grad_norm_([_param()], torch.tensor(-1.0)), ValueError, "`max_norm`"),
    Row("clip_grad_norm_", "max_norm tensor nan", lambda: F.clip_grad_norm_([_param()], torch.tensor(math.nan)), ValueError, "`max_norm`"),
    Row("clip_grad_norm_", "max_norm < 0", lambda: F.clip_grad_norm_([_param()], -1.0), ValueError, "`max_norm`"),
    Row("clip_grad_norm_", "max_norm string", lambda: F.clip_grad_norm_([_param()], "1"), TypeError, "`max_norm`"),
    Row("clip_grad_norm_", "max_norm 2 elements", lambda: F.clip_grad_norm_([_param()], torch.ones(2)), ValueError, "`max_norm`"),
    Row("clip_grad_norm_", "norm_type='fro'", lambda: F.clip_grad_norm_([_param()], 1.0, "fro"), TypeError, "`norm_type`"),
    Row("clip_grad_value_", "clip_value tensor < 0", lambda: F.clip_grad_value_([_param()], torch.tensor(-1.0)), ValueError, "`clip_value`"),
    Row("clip_grad_value_", "clip_value=0", lambda: F.clip_grad_value_([_param()], 0.0), ValueError, "`clip_value`"),
    Row("clip_grad_value_", "clip_value bool tensor", lambda: F.clip_grad_value_([_param()], torch.tensor(True)), TypeError, "`clip_value`"),
    Row("clip_grads_with_norm_", "total_norm string", lambda: F.clip_grads_with_norm_([_param()], 1.0, "5"), TypeError, "`total_norm`"),
    Row("clip_grads_with_norm_", "max_norm tensor < 0", lambda: F.clip_grads_with_norm_([_param()], torch.tensor(-1.0), 5.0), ValueError, "`max_norm`"),
    Row("adaptive_grad_clip_", "a dict", lambda: F.adaptive_grad_clip_({"w": _param()}), TypeError, "`parameters`"),
    Row("adaptive_grad_clip_", "strings", lambda: F.adaptive_grad_clip_(["w"]), TypeError, "`parameters`"),
    Row("adaptive_grad_clip_", "clip_factor=0", lambda: F.adaptive_grad_clip_([_param()], 0.0), ValueError, "`clip_factor`"),
    Row("adaptive_grad_clip_", "exclude string", lambda: F.adaptive_grad_clip_([("w", _param())], exclude="w"), TypeError, "`exclude`"),
    Row("adaptive_grad_clip_", "exclude None", lambda: F.adaptive_grad_clip_([("w", _param())], exclude=None), TypeError, "`exclude`"),
    Row("adaptive_grad_clip_", "exclude unnamed", lambda: F.adaptive_grad_clip_([_param()], exclude=["w"]), ValueError, "`exclude`"),
    Row("unitwise_norm", "a list", lambda: F.unitwise_norm([1.0]), TypeError, "`tensor`"),
    Row("matches_any", "patterns string", lambda: F.matches_any("a", "abc"), TypeError, "`patterns`"),
    Row("matches_any", "name not a string", lambda: F.matches_any(3, ["a"]), TypeError, "`name`"),
    Row("uses_host_scalars", "an int", lambda: F.uses_host_scalars(3), TypeError, "`device`"),
    Row("uses_host_scalars", "unknown name", lambda: F.uses_host_scalars("gpu9"), ValueError, "`device`"),
    Row("any_across_ranks", "1-d flags", lambda: F.any_across_ranks(torch.tensor([True, False])), ValueError, "`flag`"),
    Row("any_across_ranks", "float flag", lambda: F.any_across_ranks(torch.tensor(1.0)), TypeError, "`flag`"),
    Row("discard_grads_", "strings", lambda: F.discard_grads_(["a"]), TypeError, "`parameters`"),
    Row("nonfinite_parameter_names", "unnamed", lambda: F.nonfinite_parameter_names([_param()]), TypeError, "`named_parameters`"),
    Row("PercentileClipper", "percentile=101", lambda: F.PercentileClipper(101.0), ValueError, "`percentile`"),
    Row("PercentileClipper", "window_size=2.5", lambda: F.PercentileClipper(window_size=2.5), TypeError, "`window_size`"),
    Row("PercentileClipper", "step string", lambda: F.PercentileClipper().step("1"), TypeError, "`total_norm`"),
    Row("PercentileClipper", "load_state_dict({})", lambda: F.PercentileClipper().load_state_dict({}), ValueError, "`state_dict`"),
    Row("AutoClip", "window_size=0", lambda: F.AutoClip(window_size=0), ValueError, "`window_size`"),
    Row("ZScoreClipper", "warmup_steps=1", lambda: F.ZScoreClipper(warmup_steps=1, z_threshold=1e6), ValueError, "`warmup_steps`"),
    Row("ZScoreClipper", "alpha=1", lambda: F.ZScoreClipper(alpha=1.0), ValueError, "`alpha`"),
    Row("ZScoreClipper", "clip_rule", lambda: F.ZScoreClipper(clip_rule="clamp"), ValueError, "`clip_rule`"),
    Row("ZScoreClipper", "step string", lambda: F.ZScoreClipper().step("1"), TypeError, "`total_norm`"),
    Row("ZScoreClipper", "load_state_dict({})", lambda: F.ZScoreClipper().load_state_dict({}), ValueError, "`state_dict`"),
    Row("ZClip", "z_threshold=0", lambda: F.ZClip(z_threshold=0.0), ValueError, "`z_threshold`"),
    # initialisation
    Row("check_scheme", "unknown scheme", lambda: F.check_scheme(_lstm(), "he"), ValueError, "`scheme`"),
    Row("init_rnn_", "unknown scheme", lambda: F.init_rnn_(_lstm(), "he"), ValueError, "`scheme`"),
    Row("chrono_", "max_timescale=1", lambda: F.chrono_(_lstm(), 1.0), ValueError, "`max_timescale`"),
    Row("forget_gate_bias_", "value=nan", lambda: F.forget_gate_bias_(_lstm(), math.nan), ValueError, "`value`"),
    Row("identity_", "gain<0", lambda: F.identity_(nn.RNN(2, 3, nonlinearity="relu"), -1.0), ValueError, "`gain`"),
    Row("orthogonal_", "gain=0", lambda: F.orthogonal_(_lstm(), 0.0), ValueError, "`gain`"),
    Row("orthogonal_", "generator", lambda: F.orthogonal_(_lstm(), generator=1), TypeError, "`generator`"),
    Row("xavier_normal_", "gain=0", lambda: F.xavier_normal_(_lstm(), 0.0), ValueError, "`gain`"),
    Row("xavier_uniform_", "gain=inf", lambda: F.xavier_uniform_(_lstm(), math.inf), ValueError, "`gain`"),
    Row("gate_blocks", "unknown kind", lambda: F.gate_blocks(torch.ones(8, 2), "X"), ValueError, "`kind`"),
    Row("gate_block", "unknown gate", lambda: F.gate_block(torch.ones(8, 2), "LSTM", "forgot"), ValueError, "`gate`"),
    Row("layer_weights", "not recurrent", lambda: F.layer_weights(nn.Linear(2, 3)), TypeError, "`module`"),
    Row("recurrent_kind", "not recurrent", lambda: F.recurrent_kind(nn.Linear(2, 3)), TypeError, "`module`"),
    Row("recurrent_modules", "a string", lambda: F.recurrent_modules("x"), TypeError, "`root`"),
    # gradient flow and loss spikes
    Row("GradientFlowRecorder", "a list", lambda: F.GradientFlowRecorder([_lstm()]), TypeError, "`modules`"),
    Row("GradientFlowRecorder", "not recurrent", lambda: F.GradientFlowRecorder({"l": nn.Linear(2, 3)}), TypeError, "`modules"),
    Row("gradient_flow", "loss_fn string", lambda: F.gradient_flow(_lstm(), torch.ones(3, 1, 2), "sum"), TypeError, "`loss_fn`"),
    Row("gradient_flow", "integer inputs", lambda: F.gradient_flow(_lstm(), torch.ones(3, 1, 2, dtype=torch.long), sum), TypeError, "`inputs`"),
    Row("flow_statistics", "negative", lambda: F.flow_statistics(torch.tensor([-1.0, 2.0, 3.0])), ValueError, "`profile`"),
    Row("flow_statistics", "complex", lambda: F.flow_statistics(torch.tensor([1 + 1j, 2.0])), TypeError, "`profile`"),
    Row("flow_statistics", "a list", lambda: F.flow_statistics([1.0, 2.0]), TypeError, "`profile`"),
    Row("flow_statistics", "threshold=0", lambda: F.flow_statistics(torch.ones(3), 0.0), ValueError, "`threshold`"),
    Row("check_flow_rule", "explode_factor=1", lambda: F.check_flow_rule(0.01, 1.0, 0.5), ValueError, "`explode_factor`"),
    Row("FlowStatistics", "unknown verdict", lambda: F.FlowStatistics(0.0, 1, "fine", 3, 1.0), ValueError, "`verdict`"),
    Row("LossSpikeDetector", "min_ratio<1", lambda: F.LossSpikeDetector(min_ratio=0.5), ValueError, "`min_ratio`"),
    Row("LossSpikeDetector", "warmup_steps=1", lambda: F.LossSpikeDetector(warmup_steps=1), ValueError, "`warmup_steps`"),
    Row("LossSpikeDetector", "step string", lambda: F.LossSpikeDetector().step("1"), TypeError, "`loss`"),
    Row("mean_across_ranks", "2 elements", lambda: F.mean_across_ranks(torch.ones(2)), ValueError, "`value`"),
    Row("mean_across_ranks", "a float", lambda: F.mean_across_ranks(1.0), TypeError, "`value`"),
    # rnn_stability.callbacks
    Row("AdaptiveGradientClipping", "strategy", lambda: C.AdaptiveGradientClipping("median"), ValueError, "`strategy`"),
    Row("AdaptiveGradientClipping", "exclude None", lambda: C.AdaptiveGradientClipping("agc", exclude=None), TypeError, "`exclude`"),
    Row("AdaptiveGradientClipping", "warmup_steps=1", lambda: C.AdaptiveGradientClipping("zscore", warmup_steps=1), ValueError, "`warmup_steps`"),
    Row("AdaptiveGradientClipping", "skip_nonfinite string", lambda: C.AdaptiveGradientClipping(skip_nonfinite="no"), TypeError, "`skip_nonfinite`"),
    Row("GradientNormMonitor", "log_weight_norms string", lambda: C.GradientNormMonitor(log_weight_norms="no"), TypeError, "`log_weight_norms`"),
    Row("GradientNormMonitor", "log_update_ratio string", lambda: C.GradientNormMonitor(log_update_ratio="false"), TypeError, "`log_update_ratio`"),
    Row("GradientNormMonitor", "granularity", lambda: C.GradientNormMonitor(granularity="layer"), ValueError, "`granularity`"),
    Row("GradientNormMonitor", "norm_type='fro'", lambda: C.GradientNormMonitor(norm_type="fro"), TypeError, "`norm_type`"),
    Row("GradientFlowMonitor", "save_plots string", lambda: C.GradientFlowMonitor(save_plots="no"), TypeError, "`save_plots`"),
    Row("GradientFlowMonitor", "every_n_steps=0", lambda: C.GradientFlowMonitor(every_n_steps=0), ValueError, "`every_n_steps`"),
    Row("GradientFlowMonitor", "modules string", lambda: C.GradientFlowMonitor(modules="rnn"), ValueError, "`modules`"),
    Row("LossSpikeRecovery", "action", lambda: C.LossSpikeRecovery(action="restart"), ValueError, "`action`"),
    Row("LossSpikeRecovery", "max_rollbacks=0", lambda: C.LossSpikeRecovery(max_rollbacks=0), ValueError, "`max_rollbacks`"),
    Row("RNNInitializer", "scheme", lambda: C.RNNInitializer(scheme="he"), ValueError, "`scheme`"),
    Row("RNNInitializer", "seed string", lambda: C.RNNInitializer(seed="x"), ValueError, "`seed`"),
    Row("StableRNN", "layer_norm int", lambda: C.StableRNN(layer_norm=3), TypeError, "`layer_norm`"),
    Row("StableRNN", "include int", lambda: C.StableRNN(include=3), TypeError, "`include`"),
    Row("StableRNN", "zoneout string", lambda: C.StableRNN(zoneout="x"), TypeError, "`zoneout`"),
    Row("plot_flow_heatmap", "lengths differ", lambda: C.plot_flow_heatmap([1, 2], [torch.ones(3)]), ValueError, "`steps`"),
    Row("plot_flow_profile", "a string", lambda: C.plot_flow_profile("x"), TypeError, "`profile`"),
    Row("plot_flow_profile", "2-d", lambda: C.plot_flow_profile(torch.ones(2, 3)), ValueError, "`profile`"),
]
# fmt: on

EXEMPT: dict[str, str] = {
    "force_sync_free": "takes no argument",
    "is_recurrent": "a predicate: any object may be asked about (False for non-modules)",
    "ClipRecord": "a record the clipping callback fills every step, not configuration (a check would cost every step)",
}

PACKAGES = (N, F, C)


def _public_callables() -> set[str]:
    return {name for package in PACKAGES for name in package.__all__ if callable(getattr(package, name))}


@pytest.mark.parametrize("row", ROWS, ids=[f"{row.name}-{row.case}" for row in ROWS])
def test_bad_argument_raises_naming_the_parameter(row: Row) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        row.call()
    assert type(info.value) is row.error or isinstance(info.value, row.error), info.value
    assert row.names in str(info.value), f"{row.names!r} not in {str(info.value)!r}"


def test_every_public_callable_has_a_row() -> None:
    public = _public_callables()
    covered = {row.name for row in ROWS}
    assert not public - covered - set(EXEMPT), "add a row (or an exemption) for these public names"
    assert not (covered | set(EXEMPT)) - public, "rows for names that are no longer public"
    assert not covered & set(EXEMPT)


# --- the error table of docs/guide/errors.md --------------------------------------------------------------

_TABLE_ROW = re.compile(r"^\| `(?P<name>[A-Za-z_]+)` \| (?P<error>[A-Za-z]+) \| (?P<pattern>.+) \|$")


def _documented() -> list[tuple[str, str, str]]:
    """`(public name, exception type, message pattern)` of each row of the page's bad-argument table."""
    text = ERRORS_PAGE.read_text(encoding="utf-8")
    section = text.split("\n## Bad arguments\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = _TABLE_ROW.match(line)
        if match:
            rows.append((match["name"], match["error"], match["pattern"].strip()))
    return rows


def _raised(row: Row) -> str:
    try:
        row.call()
    except (TypeError, ValueError) as error:
        return str(error)
    raise AssertionError(f"{row.name} ({row.case}) raised nothing")


def test_docs_error_table_matches_the_raised_messages() -> None:
    documented = _documented()
    assert documented, f"no bad-argument table found in {ERRORS_PAGE}"
    used: set[tuple[str, str, str]] = set()
    for row in ROWS:
        message = _raised(row)
        hits = [d for d in documented if d[0] == row.name and d[1] == row.error.__name__ and d[2] in message]
        assert hits, f"{row.name} ({row.case}): {row.error.__name__} {message!r} is not in {ERRORS_PAGE.name}"
        used.update(hits)
    unused = [d for d in documented if d not in used]
    assert not unused, f"documented errors no bad call raises (add a row to ROWS or fix the page): {unused}"
    assert {name for name, _, _ in documented} == {row.name for row in ROWS}
