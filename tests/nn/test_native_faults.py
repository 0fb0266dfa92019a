"""Faults around the just-in-time build of the C++ LSTM loop (`rnn_stability.nn.native_build`).

A build killed by `SIGKILL`, a lock held by a live process, a truncated library, a read-only prebuilt cache,
a cache that cannot be written, two environments sharing one cache root: each ends within a bounded time,
with the C++ loop's correct outputs or a warning and the PyTorch loop's. The compiler is replaced by a copy
of the library this test session built, so no case compiles for real (`tests.nn.native_fault_script`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from rnn_stability.__main__ import main
from rnn_stability.nn import LSTM, native, native_build
from rnn_stability.nn.native_build import NativeLockTimeout, cache_directory, cached_library, ensure_built
from tests.helpers import native_kernel_or_skip

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("native_fault_script.py")
SO = f"{native_build.LIBRARY_NAME}.so"
BOUND = 60.0  # seconds any case may take, start-up of a child process included


@pytest.fixture(scope="module")
def library() -> Path:
    """The library this environment built (in its real cache), copied by the fake compiler."""
    native_kernel_or_skip()
    return ensure_built().library


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RNN_STABILITY_NATIVE", "RNN_STABILITY_NATIVE_CACHE", "RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RNN_STABILITY_NATIVE_LOCK_TIMEOUT", "30")


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch, library: Path) -> list[Path]:
    """In this process, "compiling" copies `library`; the list holds one entry per compilation."""
    calls: list[Path] = []

    def fake_compile(build_directory: Path) -> Path:
        calls.append(build_directory)
        shutil.copyfile(library, build_directory / SO)
        return build_directory / SO

    monkeypatch.setattr(native_build, "_compile", fake_compile)
    return calls


def prebuilt(root: Path, library: Path) -> Path:
    """A cache root holding a valid build of this environment, as `rnn-stability build-native` leaves it."""
    directory = cache_directory(root)
    directory.mkdir(parents=True)
    for name in (SO, "build.json"):
        shutil.copyfile(library.with_name(name), directory / name)
    assert cached_library(directory) == directory / SO
    return directory


def run_script(root: Path, library: Path, mode: str, log: Path, **env: str) -> subprocess.Popen[str]:
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RNN_STABILITY_NATIVE_CACHE": str(root),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(library), str(log)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[dict[str, float], str]:
    """The child's JSON line and its stderr; it must end, successfully, within `BOUND` seconds."""
    try:
        out, err = process.communicate(timeout=BOUND)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


# ---- killed, stuck and concurrent builds ---------------------------------------------------------------------


def test_build_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path, library: Path) -> None:
    log = tmp_path / "compiles.log"
    stuck = run_script(tmp_path, library, "hang", log)
    deadline = time.monotonic() + BOUND
    while not lines(log):  # it holds the build lock once its compiler has started
        assert stuck.poll() is None and time.monotonic() < deadline, stuck.communicate()[1]
        time.sleep(0.1)
    os.kill(stuck.pid, signal.SIGKILL)
    stuck.wait()
    assert (
        cache_directory(tmp_path) / "build.lock"
    ).exists()  # the file stays; its lock died with the holder

    start = time.monotonic()
    result, err = finish(run_script(tmp_path, library, "copy", log))
    assert result["native"] and result["diff"] < 1e-10
    assert len(lines(log)) == 2 and "waiting" not in err
    assert "building the C++ LSTM loop" in err
    assert time.monotonic() - start < BOUND
    assert cached_library(cache_directory(tmp_path)) is not None
    assert not list(cache_directory(tmp_path).glob("build-*"))  # the killed build's scratch folder is gone


def test_lock_held_by_a_live_process_times_out_then_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[Path]
) -> None:
    import fcntl

    monkeypatch.setenv("RNN_STABILITY_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("RNN_STABILITY_NATIVE_LOCK_TIMEOUT", "0.5")
    lock = cache_directory(tmp_path) / "build.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as holder:  # another open file: its flock conflicts with the builder's
        fcntl.flock(holder, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.raises(NativeLockTimeout, match="RNN_STABILITY_NATIVE_LOCK_TIMEOUT") as error:
            ensure_built()
        assert str(lock) in str(error.value) and time.monotonic() - start < 5

        torch.manual_seed(0)
        module = LSTM(3, 4, layer_norm=True, dtype=torch.float64)
        x = torch.randn(3, 2, 3, dtype=torch.float64)
        monkeypatch.setattr(native, "_state", {})
        monkeypatch.setattr(native, "_loaded", [])
        with pytest.warns(RuntimeWarning, match="PyTorch loop") as record:
            out = module(x)[0]
        assert any(str(lock) in str(w.message) for w in record)
    assert compiles == []
    monkeypatch.setenv("RNN_STABILITY_NATIVE", "0")
    torch.testing.assert_close(out, module(x)[0], rtol=0, atol=0)


def test_a_waiting_process_uses_the_build_it_waited_for(tmp_path: Path, library: Path) -> None:
    log = tmp_path / "compiles.log"
    first, second = (run_script(tmp_path, library, "copy", log) for _ in range(2))
    for process in (first, second):
        result, _ = finish(process)
        assert result["native"] and result["diff"] < 1e-10
    assert len(lines(log)) == 1


# ---- what is in the cache ------------------------------------------------------------------------------------


def test_truncated_library_is_rebuilt_not_loaded(tmp_path: Path, library: Path) -> None:
    directory = prebuilt(tmp_path, library)
    with (directory / SO).open("r+b") as file:
        file.truncate(library.stat().st_size // 2)
    assert cached_library(directory) is None
    log = tmp_path / "compiles.log"
    result, _ = finish(run_script(tmp_path, library, "copy", log))
    assert result["native"] and result["diff"] < 1e-10
    assert len(lines(log)) == 1 and cached_library(directory) is not None


@pytest.mark.parametrize("damage", ["overwritten", "no record", "bad record"])
def test_damaged_cache_counts_as_not_built(
    tmp_path: Path, library: Path, compiles: list[Path], damage: str
) -> None:
    directory = prebuilt(tmp_path, library)
    if damage == "overwritten":  # same size, other bytes
        data = bytearray((directory / SO).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (directory / SO).write_bytes(bytes(data))
    elif damage == "no record":  # killed between installing the library and writing its record
        (directory / "build.json").unlink()
    else:
        (directory / "build.json").write_text("{not json")
    assert cached_library(directory) is None
    assert ensure_built(directory).built and len(compiles) == 1
    assert cached_library(directory) == directory / SO


def test_read_only_prebuilt_cache_is_used_as_it_is(tmp_path: Path, library: Path) -> None:
    directory = prebuilt(tmp_path / "image", library)
    for path in (directory, *directory.iterdir()):
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    try:
        log = tmp_path / "compiles.log"
        result, err = finish(run_script(tmp_path / "image", library, "forbid", log))
        assert result["native"] and result["diff"] < 1e-10
        assert lines(log) == [] and "building" not in err
        assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before  # no lock file either
    finally:
        directory.chmod(0o755)


def test_unwritable_cache_without_a_build_warns_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[Path]
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("RNN_STABILITY_NATIVE_CACHE", str(tmp_path / "file" / "cache"))  # cannot be created
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_loaded", [])
    torch.manual_seed(0)
    module = LSTM(3, 4, layer_norm=True)
    with pytest.warns(RuntimeWarning, match="PyTorch loop"):
        module(torch.randn(3, 2, 3))
    assert native._state == {"ops": None} and compiles == []


def test_two_environments_keep_one_build_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: Path, compiles: list[Path]
) -> None:
    prebuilt(tmp_path, library)
    environment_a = cache_directory(tmp_path)
    with monkeypatch.context() as mp:
        mp.setattr(torch, "__version__", "99.0.0+other")
        environment_b = cache_directory(tmp_path)
        assert ensure_built(environment_b).built
    assert environment_a != environment_b and len(compiles) == 1
    for _ in range(2):  # switching back and forth builds nothing more
        assert not ensure_built(environment_a).built
        with monkeypatch.context() as mp:
            mp.setattr(torch, "__version__", "99.0.0+other")
            assert not ensure_built(environment_b).built
    assert len(compiles) == 1


@pytest.mark.parametrize(
    "change",
    [
        ("torch", "__version__", "0.0.1"),
        ("torch._C", "_GLIBCXX_USE_CXX11_ABI", "flip"),
        ("sys.implementation", "cache_tag", "pypy-310"),
        ("native_build", "compile_flags", lambda: ["-O0"]),
        ("native_build", "source_digest", lambda: "0" * 16),
    ],
    ids=["torch", "cxx11-abi", "python", "flags", "sources"],
)
def test_cache_key_depends_on_what_the_binary_depends_on(
    monkeypatch: pytest.MonkeyPatch, change: tuple[str, str, object]
) -> None:
    owner_name, attribute, value = change
    owner = {"torch": torch, "torch._C": torch._C, "sys.implementation": sys.implementation}.get(
        owner_name, native_build
    )
    key = native_build.cache_key()
    if value == "flip":
        value = not getattr(owner, attribute)
    monkeypatch.setattr(owner, attribute, value)
    assert native_build.cache_key() != key


@pytest.mark.parametrize("text", ["-1", "soon", "inf", "nan"])
def test_lock_timeout_must_be_a_number_of_seconds(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("RNN_STABILITY_NATIVE_LOCK_TIMEOUT", text)
    with pytest.raises(ValueError, match="RNN_STABILITY_NATIVE_LOCK_TIMEOUT"):
        native_build.lock_timeout()


# ---- saying it, and building ahead of time -------------------------------------------------------------------


def test_first_build_says_so_once_on_rank_zero_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], compiles: list[Path]
) -> None:
    build = ensure_built(tmp_path / "a")
    err = capsys.readouterr().err
    assert build.built and err.count("building the C++ LSTM loop, once") == 1 and "built the C++" in err
    ensure_built(tmp_path / "a")
    assert capsys.readouterr().err == ""  # loading a cached build is silent
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ensure_built(tmp_path / "b").built and capsys.readouterr().err == ""


def test_build_native_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], compiles: list[Path]
) -> None:
    monkeypatch.setenv("RNN_STABILITY_NATIVE_CACHE", str(tmp_path))
    assert main(["build-native"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("built the C++ LSTM loop in ") and str(cache_directory(tmp_path) / SO) in out
    assert main(["build-native"]) == 0 and "already built" in capsys.readouterr().out
    assert main(["build-native", "--force"]) == 0 and len(compiles) == 2

    def broken(build_directory: Path) -> Path:
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(native_build, "_compile", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["build-native", "--force"]) == 1
    assert "no C++ compiler here" in capsys.readouterr().err
