"""Building and caching the C++ kernel of `rnn_stability.nn.native`: where, under which lock, and when to trust it.

The kernel is compiled once per environment into a cache folder named by what the binary depends on
(`cache_key`: torch version and build, its C++11 ABI, the Python version, the platform, the compiler flags
and a digest of the C++ sources), so two environments sharing a home folder keep one build each instead of
rebuilding each other's. The folder holds the library and a record of its size and SHA-256, written last,
after a successful build: a library that does not match its record (a build killed while copying, a
truncated or overwritten file) is never loaded but rebuilt (or, where the cache cannot be written, skipped
with a warning). A folder that holds a valid build is only read, so a read-only cache prepared ahead of time
(`rnn-stability build-native` in a Docker image) is used as it is.

Builds of one key are serialised by an advisory lock on `build.lock` in its folder (`fcntl.flock`): the
kernel releases it when its holder dies, so a build killed by `SIGKILL` leaves no stale lock. A process
waits at most `RNN_STABILITY_NATIVE_LOCK_TIMEOUT` seconds (default 600) for another one's build, then gives
up (`NativeLockTimeout`; the caller warns, naming the lock file, and runs the PyTorch loop). The compiler
runs in a child process (`rnn_stability.nn.native_compile`), which also loads the result once: a library
that cannot load fails the build, not the training process.

Environment variables: `RNN_STABILITY_NATIVE_CACHE` (the cache root; default
`$TORCH_EXTENSIONS_DIR/rnn_stability`, i.e. `~/.cache/torch_extensions/rnn_stability`) and
`RNN_STABILITY_NATIVE_LOCK_TIMEOUT`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "LIBRARY_NAME",
    "NativeBuild",
    "NativeLockTimeout",
    "cache_directory",
    "cache_key",
    "cached_library",
    "ensure_built",
    "lock_timeout",
]

LIBRARY_NAME = "rnn_stability_lstm_layer_norm"
ENV_CACHE = "RNN_STABILITY_NATIVE_CACHE"
ENV_LOCK_TIMEOUT = "RNN_STABILITY_NATIVE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 600.0
_CSRC = Path(__file__).parent / "csrc"
_RECORD = "build.json"
_LOCK = "build.lock"
_POLL_SECONDS = 0.2
_COMPILE_TIMEOUT = 3600.0  # a compiler that hangs must not hang training either


class NativeLockTimeout(RuntimeError):
    """Another process held the build lock for longer than `lock_timeout()` seconds."""


@dataclass(frozen=True)
class NativeBuild:
    """Where the kernel library is, and whether this call compiled it (and in how many seconds)."""

    library: Path
    built: bool
    seconds: float = 0.0


def source_digest() -> str:
    """SHA-256 (first 16 hex digits) of the C++ sources and headers, so a change to a header counts too."""
    return hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(_CSRC.iterdir()) if p.is_file())
    ).hexdigest()[:16]


def compile_flags() -> list[str]:
    """Optimisation flags: the widest vector code (ATen's `Vectorized`, Sleef) that torch uses on this CPU,
    AVX-512 (16 floats a vector) or AVX2 + FMA (8); the element-wise part of a step takes about half as long
    with AVX-512."""
    flags = ["-O3", "-fopenmp", f"-DRNN_STABILITY_CSRC_DIGEST={source_digest()}"]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"]
        flags += ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif capability == "AVX2":
        flags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags


LINK_FLAGS = ["-fopenmp"]


def cache_key_fields() -> dict[str, Any]:
    """What the compiled library depends on; any change gives another cache folder."""
    return {
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "python": f"{sys.implementation.cache_tag}{getattr(sys, 'abiflags', '')}",
        "platform": f"{sys.platform}-{platform.machine()}",
        "cflags": compile_flags(),
        "ldflags": LINK_FLAGS,
        "sources": source_digest(),
    }


def cache_key() -> str:
    """A short digest of `cache_key_fields()`, the name of this environment's cache folder."""
    fields = json.dumps(cache_key_fields(), sort_keys=True).encode()
    return hashlib.sha256(fields).hexdigest()[:16]


def cache_directory(root: str | os.PathLike[str] | None = None) -> Path:
    """This environment's cache folder: `<root>/lstm_layer_norm-<cache_key()>`.

    Args:
        root: the cache root (default: `RNN_STABILITY_NATIVE_CACHE`, else `rnn_stability` under torch's
            extensions folder, `TORCH_EXTENSIONS_DIR` or `~/.cache/torch_extensions`).
    """
    if root is None:
        root = os.environ.get(ENV_CACHE) or None
    if root is None:
        from torch.utils.cpp_extension import get_default_build_root

        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / "rnn_stability"
    return Path(root).expanduser() / f"lstm_layer_norm-{cache_key()}"


def lock_timeout() -> float:
    """Seconds to wait for another process's build: `RNN_STABILITY_NATIVE_LOCK_TIMEOUT`, default 600.

    Raises:
        ValueError: if the variable is set to something other than a non-negative number of seconds.
    """
    text = os.environ.get(ENV_LOCK_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"{ENV_LOCK_TIMEOUT} must be a finite number of seconds >= 0, got {text!r}")
    return seconds


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_library(directory: Path) -> Path | None:
    """The library in `directory` if its build record matches it (key, size, SHA-256), else `None`.

    Only reads: a read-only cache works. Any mismatch or unreadable file counts as "not built".
    """
    library = directory / f"{LIBRARY_NAME}.so"
    try:
        record = json.loads((directory / _RECORD).read_text())
        valid = (
            record.get("key") == cache_key_fields()
            and library.stat().st_size == record.get("size")
            and _file_digest(library) == record.get("sha256")
        )
    except (OSError, ValueError, AttributeError):
        return None
    return library if valid else None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a temporary file in the same folder, flushed, then renamed."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def _build_lock(directory: Path, timeout: float) -> Iterator[None]:
    """Hold the advisory lock on `directory/build.lock`, waiting at most `timeout` seconds for it."""
    path = directory / _LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): builds of one key are not serialised
            yield
            return
        deadline = time.monotonic() + timeout
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NativeLockTimeout(
                        f"waited {timeout:g} s for the lock file {path}, held by another process building "
                        f"the C++ LSTM loop; if no build is running, delete that file, or set "
                        f"{ENV_LOCK_TIMEOUT} to wait longer"
                    ) from None
                if not said:
                    _say(f"waiting for another process that builds the C++ LSTM loop (lock file {path})")
                    said = True
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _is_rank_zero() -> bool:
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def _say(message: str) -> None:
    """One line on stderr from the first process of a distributed job (the others would repeat it)."""
    if _is_rank_zero():
        print(f"rnn_stability: {message}", file=sys.stderr, flush=True)


def _find_ninja() -> None:
    """Put the `ninja` of the `ninja` package on `PATH` when none is there (a venv not activated)."""
    if shutil.which("ninja") is None:
        try:
            import ninja  # type: ignore[import-untyped]
        except ImportError:
            return
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _compile(build_directory: Path) -> Path:
    """Compile the kernel into `build_directory` in a child process that also loads it once; its path."""
    _find_ninja()
    spec = {
        "name": LIBRARY_NAME,
        "sources": [str(path) for path in sorted(_CSRC.glob("*.cpp"))],
        "cflags": compile_flags(),
        "ldflags": LINK_FLAGS,
        "build_directory": str(build_directory),
    }
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "rnn_stability.nn.native_compile", json.dumps(spec)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=_COMPILE_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        tail = result.stdout.strip().splitlines()[-15:]
        raise RuntimeError(
            f"the compiler process exited with status {result.returncode}:\n" + "\n".join(tail)
        )
    return build_directory / f"{LIBRARY_NAME}.so"


def _build_into(directory: Path) -> float:
    """Compile, then install library and record in `directory` (record last); the seconds it took."""
    for leftover in [*directory.glob("build-*"), *directory.glob(f".{LIBRARY_NAME}.so.*")]:
        # Left by a build that was killed; we hold the lock, so no live build of this key owns them.
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=directory, prefix="build-") as scratch:
        built = _compile(Path(scratch))
        data = built.read_bytes()
    library = directory / f"{LIBRARY_NAME}.so"
    _write_atomically(library, data)
    seconds = time.perf_counter() - start
    record = {
        "key": cache_key_fields(),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "seconds": round(seconds, 1),
    }
    _write_atomically(directory / _RECORD, json.dumps(record, indent=1).encode())
    return seconds


def ensure_built(directory: Path | None = None, *, force: bool = False) -> NativeBuild:
    """The kernel library of this environment, compiled first if the cache holds no valid build.

    Says on stderr (first process of a distributed job only) that it is building, once, and how long it
    took. Safe to call from several processes at once: one builds, the others wait for it and use its build.

    Args:
        directory: the cache folder (default: `cache_directory()`).
        force: compile even if a valid build is cached.

    Raises:
        NativeLockTimeout: if another process held the build lock for longer than `lock_timeout()`.
        OSError: if the cache holds no valid build and cannot be written.
        RuntimeError: if the compilation fails (the message ends with the compiler's last lines).
    """
    directory = cache_directory() if directory is None else Path(directory)
    if not force and (library := cached_library(directory)) is not None:
        return NativeBuild(library, built=False)
    timeout = lock_timeout()
    directory.mkdir(parents=True, exist_ok=True)
    with _build_lock(directory, timeout):
        if not force and (library := cached_library(directory)) is not None:
            return NativeBuild(library, built=False)  # built by the process we waited for
        _say(f"building the C++ LSTM loop, once (about 20 s; cached in {directory}) ...")
        seconds = _build_into(directory)
        _say(f"built the C++ LSTM loop in {seconds:.1f} s")
    return NativeBuild(directory / f"{LIBRARY_NAME}.so", built=True, seconds=seconds)
