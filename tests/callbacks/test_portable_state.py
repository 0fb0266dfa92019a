"""Callbacks that have run pickle and deep-copy without the run: no model, trainer, hooks or parameter ids."""

from __future__ import annotations

import copy
import pickle
import pickletools

import lightning as L

from rnn_stability.callbacks import (
    AdaptiveGradientClipping,
    GradientFlowMonitor,
    GradientNormMonitor,
    LossSpikeRecovery,
    RNNInitializer,
    StableRNN,
)
from tests.helpers import TinyRNNRegressor, adding_loader, quiet_trainer


def pickled_globals(data: bytes) -> set[str]:
    """Module and name of every class or function a pickle refers to."""
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if "UNICODE" in opcode.name:
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


def test_callbacks_that_ran_pickle_their_settings_and_counters_only(tmp_path) -> None:
    callbacks = [
        StableRNN(layer_norm=True),
        RNNInitializer(),
        GradientNormMonitor(log_every_n_steps=1),
        AdaptiveGradientClipping(strategy="zscore", warmup_steps=2),
        GradientFlowMonitor(every_n_steps=2),
        LossSpikeRecovery(action="rollback", warmup_steps=2),
    ]
    L.seed_everything(0, verbose=False)
    quiet_trainer(tmp_path, callbacks=callbacks, max_steps=6, log_every_n_steps=1).fit(
        TinyRNNRegressor(), adding_loader()
    )
    for callback in callbacks:
        assert callable(callback.log)  # Lightning attached the module's `log` ...
        data = pickle.dumps(callback)
        names = pickled_globals(data)
        # ... which is left behind, and with it the model
        assert not any(name.startswith(("tests.", "rnn_stability.nn", "torch.nn")) for name in names), names
        twin = pickle.loads(data)
        assert "log" not in vars(twin) and type(twin) is type(callback)
        assert pickle.dumps(twin.state_dict()) == pickle.dumps(callback.state_dict())
        assert type(copy.deepcopy(callback)) is type(callback)
    # a copy trains again as the original would
    twins = [copy.deepcopy(callback) for callback in callbacks]
    quiet_trainer(tmp_path, callbacks=twins, max_steps=2).fit(TinyRNNRegressor(), adding_loader())
