"""LossSpikeDetector: the host-scalar path (CPU) and the sync-free tensor path take the same decisions."""

from __future__ import annotations

import math

import torch

from rnn_stability.functional import LossSpikeDetector, force_sync_free


def test_host_and_sync_free_paths_agree_on_a_spiky_stream():
    generator = torch.Generator().manual_seed(0)
    stream = (0.5 + torch.rand(300, generator=generator)).tolist()
    for step, value in {40: 30.0, 41: math.nan, 90: math.inf, 120: 0.0, 150: 5.0, 200: 1e39}.items():
        stream[step] = value
    host, sync_free = LossSpikeDetector(warmup_steps=10), LossSpikeDetector(warmup_steps=10)
    host_flags = [host.judge(x) for x in stream]
    with force_sync_free():
        tensor_flags = [bool(sync_free.step(torch.tensor(x))) for x in stream]
    assert host_flags == tensor_flags
    assert [s for s, bad in enumerate(host_flags) if bad] == [40, 41, 90, 150, 200]
    for key, value in host.state_dict().items():
        assert math.isclose(value, sync_free.state_dict()[key], rel_tol=1e-6), key


def test_step_on_the_cpu_returns_a_bool_tensor():
    detector = LossSpikeDetector(warmup_steps=2)
    flags = [detector.step(torch.tensor(x)) for x in (1.0, 1.0, 100.0)]
    assert all(f.dtype == torch.bool and f.shape == () for f in flags)
    assert [bool(f) for f in flags] == [False, False, True]
