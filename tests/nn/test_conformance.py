"""torch's own module samples (``module_db``) for LSTM / GRU / LSTMCell / GRUCell, run against our classes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db

from rnn_stability.nn import GRU, LSTM, GRUCell, LSTMCell

OURS: dict[type, type] = {nn.LSTM: LSTM, nn.GRU: GRU, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}
INFOS = [info for info in module_db if info.module_cls in OURS]
OPTIONS = [{}, {"layer_norm": True}]


def _ids(info: Any) -> str:
    return info.module_cls.__name__


def _samples(info: Any, requires_grad: bool = False) -> list[Any]:
    return info.module_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=requires_grad, training=False
    )


def _flat(value: Any) -> list[Tensor]:
    if isinstance(value, PackedSequence):
        return [value.data]
    if isinstance(value, Tensor):
        return [value]
    return [t for item in value for t in _flat(item)]


def _noncontiguous(value: Any) -> Any:
    """Same values, non-contiguous storage (every other element of a doubled last dim)."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return value
        doubled = torch.stack([value, torch.full_like(value, float("nan"))], -1)
        return doubled.flatten(-2)[..., ::2]
    if isinstance(value, tuple):
        return tuple(_noncontiguous(v) for v in value)
    return value


def test_module_db_has_all_four_classes() -> None:
    assert {info.module_cls for info in INFOS} == set(OURS)


@pytest.mark.parametrize("info", INFOS, ids=_ids)
def test_forward_matches_torch_and_noncontiguous(info: Any) -> None:
    for sample in _samples(info):
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        f_args, f_kwargs = sample.forward_input.args, sample.forward_input.kwargs
        torch.manual_seed(0)
        theirs = info.module_cls(*c_args, **c_kwargs).double()
        for options in OPTIONS:
            ours = OURS[info.module_cls](*c_args, **c_kwargs, **options).double()
            ours.load_state_dict(theirs.state_dict(), strict=False)
            got = _flat(ours(*f_args, **f_kwargs))
            if not options:
                for a, b in zip(got, _flat(theirs(*f_args, **f_kwargs)), strict=True):
                    assert torch.equal(a, b)
            again = _flat(ours(*_noncontiguous(f_args), **f_kwargs))
            for a, b in zip(got, again, strict=True):
                torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("info", [i for i in INFOS if i.module_error_inputs_func], ids=_ids)
def test_error_inputs_raise_same_type(info: Any) -> None:
    errors = info.module_error_inputs_func(
        info, device="cpu", dtype=torch.float64, requires_grad=False, training=False
    )
    for error in errors:
        sample = error.module_error_input
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        for options in OPTIONS:
            if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
                with pytest.raises(error.error_type, match=error.error_regex):
                    OURS[info.module_cls](*c_args, **c_kwargs, **options)
                continue
            module = OURS[info.module_cls](*c_args, **c_kwargs, **options).double()
            with pytest.raises(error.error_type):
                module(*sample.forward_input.args, **sample.forward_input.kwargs)


@pytest.mark.parametrize("options", OPTIONS, ids=["off", "layer_norm"])
@pytest.mark.parametrize("info", INFOS, ids=_ids)
def test_gradcheck_first_samples(info: Any, options: dict) -> None:
    for sample in _samples(info, requires_grad=True)[:2]:
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        module = OURS[info.module_cls](*c_args, **c_kwargs, **options).double()
        f_args = sample.forward_input.args
        leaves = [t for t in _flat(f_args) if t.requires_grad]

        def fn(
            *inputs: Tensor, f_args: Any = f_args, module: nn.Module = module, leaves: list = leaves
        ) -> Tensor:
            mapping = {id(t): inputs[k] for k, t in enumerate(leaves)}

            def swap(value: Any) -> Any:
                if isinstance(value, Tensor):
                    return mapping.get(id(value), value)
                if isinstance(value, tuple):
                    return tuple(swap(v) for v in value)
                return value

            return torch.cat([t.reshape(-1) for t in _flat(module(*swap(f_args)))])

        assert torch.autograd.gradcheck(fn, tuple(leaves), fast_mode=True)


def test_deepcopy_of_sample_modules() -> None:
    for info in INFOS:
        sample = _samples(info)[0]
        module = OURS[info.module_cls](*sample.constructor_input.args, **sample.constructor_input.kwargs)
        clone = copy.deepcopy(module)
        for (n1, p1), (n2, p2) in zip(module.named_parameters(), clone.named_parameters(), strict=True):
            assert n1 == n2 and torch.equal(p1, p2) and p1 is not p2
