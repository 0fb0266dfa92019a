"""Child process of `rnn_stability.nn.native_build`: compiles the C++ kernel, then loads it once.

Run as `python -m rnn_stability.nn.native_compile SPEC` (SPEC: JSON with `name`, `sources`, `cflags`,
`ldflags`, `build_directory`); exits with status 0 only if the library built and loaded. Compiling and
loading here, not in the training process, means a library that crashes on load ends this process only.
"""

from __future__ import annotations

import json
import sys


def main(spec_json: str) -> None:
    import torch
    from torch.utils import cpp_extension

    spec = json.loads(spec_json)
    cpp_extension.load(
        name=spec["name"],
        sources=spec["sources"],
        extra_cflags=spec["cflags"],
        extra_ldflags=spec["ldflags"],
        build_directory=spec["build_directory"],
        is_python_module=False,
        verbose=False,
    )
    torch.ops.rnn_stability.workspace_bytes()  # the operators are registered and answer


if __name__ == "__main__":
    main(sys.argv[1])
