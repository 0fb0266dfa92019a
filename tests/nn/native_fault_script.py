"""Child process of `tests.nn.test_native_faults`: one forward of `LSTM(layer_norm=True)` in float64.

`python native_fault_script.py MODE LIBRARY LOG`, with the cache root in `RNN_STABILITY_NATIVE_CACHE`. The
compiler is replaced by a copy of the already built `LIBRARY` (so a "build" takes no time), which appends
a line to `LOG` first; MODE `copy` copies, `hang` never returns (the test kills the process), `forbid`
fails the build. Prints one JSON line: whether the C++ loop ran, and its largest difference from the
PyTorch loop on the same input.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from rnn_stability.nn import LSTM, native, native_build


def fake_compile(build_directory: Path) -> Path:
    mode, library, log = sys.argv[1:4]
    with open(log, "a") as file:
        file.write(f"{os.getpid()}\n")
    if mode == "hang":
        time.sleep(3600)
    if mode == "forbid":
        raise AssertionError("this test's cache holds a valid build: nothing may be compiled")
    target = build_directory / f"{native_build.LIBRARY_NAME}.so"
    shutil.copyfile(library, target)
    return target


def main() -> None:
    native_build._compile = fake_compile  # type: ignore[assignment]
    torch.manual_seed(0)
    module = LSTM(3, 5, num_layers=2, layer_norm=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out = module(x)[0]
    used = native._state["ops"] is not None
    os.environ["RNN_STABILITY_NATIVE"] = "0"
    expected = module(x)[0]
    print(json.dumps({"native": used, "diff": float((out - expected).abs().max())}))


if __name__ == "__main__":
    main()
