"""Scripting, tracing and exporting our modules: `torch.jit.script` (options off: exactly torch's script;
options on: a clear error), `torch.jit.trace`, `torch.export` and both ONNX exporters."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
import torch
from torch import nn

from rnn_stability.nn import GRU, LSTM, GRUCell, LSTMCell

MODULES = [
    (LSTM, nn.LSTM, (3, 4, 2), {"proj_size": 2, "bidirectional": True}, (5, 2, 3)),
    (GRU, nn.GRU, (3, 4, 2), {"batch_first": True}, (2, 5, 3)),
    (LSTMCell, nn.LSTMCell, (3, 4), {}, (2, 3)),
    (GRUCell, nn.GRUCell, (3, 4), {"bias": False}, (2, 3)),
]
IDS = [m[0].__name__ for m in MODULES]


def _scripted_code(module: torch.jit.ScriptModule) -> dict[str, bytes]:
    """The TorchScript source files of a saved script module."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    archive = zipfile.ZipFile(buffer)
    return {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist() if "/code/" in n}


def _leaves(value: Any) -> list[torch.Tensor]:
    return list(torch.utils._pytree.tree_leaves(value))


class Holder(nn.Module):
    """Calls the module it holds: a scripted RNN's overloaded `forward` is called from scripted code."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Any:
        return self.inner(x)


@pytest.mark.parametrize(("ours", "theirs", "args", "kwargs", "shape"), MODULES, ids=IDS)
def test_script_with_options_off_is_torchs_script(
    ours: Any, theirs: Any, args: Any, kwargs: Any, shape: Any
) -> None:
    torch.manual_seed(0)
    module = ours(*args, **kwargs)
    reference = theirs(*args, **kwargs)
    reference.load_state_dict(module.state_dict())
    scripted = torch.jit.script(module)
    assert scripted.original_name == theirs.__name__
    assert _scripted_code(scripted) == _scripted_code(torch.jit.script(reference))
    x = torch.randn(*shape)
    for a, b in zip(_leaves(torch.jit.script(Holder(module))(x)), _leaves(reference(x)), strict=True):
        assert torch.equal(a, b)
    # The script module holds the module's own parameters, not copies.
    assert all(p is q for p, q in zip(scripted.parameters(), module.parameters(), strict=True))


def test_script_of_a_model_holding_our_module() -> None:
    model = nn.Sequential(nn.Linear(3, 3), GRUCell(3, 4))
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3)
    assert torch.equal(scripted(x), model(x))


@pytest.mark.parametrize(
    ("module", "flags"),
    [
        (LSTM(3, 4, layer_norm=True), "layer_norm=True"),
        (GRU(4, 4, residual=True), "residual=True"),
        (LSTM(4, 4, layer_norm=True, residual=True), "layer_norm=True, residual=True"),
        (LSTMCell(3, 4, layer_norm=True), "layer_norm=True"),
        (GRUCell(3, 4, layer_norm=True), "layer_norm=True"),
    ],
    ids=["lstm-ln", "gru-res", "lstm-both", "lstmcell-ln", "grucell-ln"],
)
def test_script_with_options_on_points_to_compile_and_export(module: nn.Module, flags: str) -> None:
    with pytest.raises(RuntimeError, match=r"torch\.compile.*torch\.export") as error:
        torch.jit.script(module)
    assert f"{type(module).__name__}({flags})" in str(error.value)


def _layer_norm_models(dtype: torch.dtype = torch.float64) -> list[tuple[str, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    options: dict[str, Any] = {"layer_norm": True, "dtype": dtype}
    return [
        (
            "lstm",
            LSTM(3, 4, 2, residual=True, bidirectional=True, proj_size=2, **options).eval(),
            torch.randn(5, 2, 3, dtype=dtype),
        ),
        ("gru", GRU(3, 4, batch_first=True, **options).eval(), torch.randn(2, 5, 3, dtype=dtype)),
    ]


def test_trace_with_layer_norm_records_plain_tensor_operations() -> None:
    for _, model, x in _layer_norm_models():
        traced = torch.jit.trace(model, (x,))
        assert "PythonOp" not in str(traced.graph) and "rnn_stability::" not in str(traced.graph)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)  # a graph of plain operations can be saved
        for a, b in zip(_leaves(traced(x)), _leaves(model(x)), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_torch_export_with_layer_norm() -> None:
    for _, model, x in _layer_norm_models():
        program = torch.export.export(model, (x,))
        for a, b in zip(_leaves(program.module()(x)), _leaves(model(x)), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _onnx_outputs(model_bytes: bytes, x: torch.Tensor) -> list[Any] | None:
    """The ONNX model's outputs under onnxruntime, or `None` where onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_onnx_export_with_layer_norm(dynamo: bool) -> None:
    onnx = pytest.importorskip("onnx")
    if dynamo:
        pytest.importorskip("onnxscript")
    models = _layer_norm_models(torch.float32)
    for _, model, x in models[:1] if dynamo else models:
        buffer = io.BytesIO()
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            buffer.write(program.model_proto.SerializeToString())
        else:
            torch.onnx.export(model, (x,), buffer, dynamo=False)
        proto = onnx.load_from_string(buffer.getvalue())
        onnx.checker.check_model(proto)
        outputs = _onnx_outputs(buffer.getvalue(), x)
        if outputs is not None:
            for a, b in zip(outputs, _leaves(model(x)), strict=True):
                torch.testing.assert_close(torch.from_numpy(a), b.detach(), rtol=1e-4, atol=1e-5)
