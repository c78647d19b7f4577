"""Shared fixtures: tiny scenario texts, a completed trace, file and dataset helpers."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import h5py
import numba
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Step indices: 0 program, 1 calibrate, 2 read, 3 mvm. Each marker line used by the bad-input
# tests (``rows = 8``, ``seed = 7``, ``batch = 8`` ...) occurs exactly once.
TINY_TOML = """\
[run]
name = "tiny"
seed = 7
description = "8x8 test array"

[array]
rows = 8
cols = 8

[record]
subset = 16

[[timeline]]
kind = "program"
method = "verify"
verify = { tolerance = 0.5e-6, max_pulses = 20, read_noise = 0.1e-6 }

[[timeline]]
kind = "calibrate"
t = 1.0
batch = 16

[[timeline]]
kind = "read"
times = { start = 1.0, stop = 1e6, num = 4, spacing = "log" }
full_times = [1.0, 1e6]

[[timeline]]
kind = "mvm"
times = [1.0, 100.0, 10000.0]
batch = 8
"""

# Every step kind, both programming methods, stored MVM outputs: for determinism checks.
RICH_TOML = """\
[run]
name = "rich"
seed = 11

[array]
rows = 32
cols = 16

[record]
subset = 40
store_outputs = true

[[timeline]]
kind = "program"
method = "verify"

[[timeline]]
kind = "calibrate"
t = 2.0
batch = 32

[[timeline]]
kind = "read"
times = { start = 1.0, stop = 1e5, num = 6 }
full_times = [1.0, 1e5]

[[timeline]]
kind = "mvm"
times = [1.0, 1e3, 1e5]
batch = 16

[[timeline]]
kind = "wait"
duration = 1e6

[[timeline]]
kind = "refresh"

[[timeline]]
kind = "read"
times = [0.0, 10.0]

[[timeline]]
kind = "wait"
duration = 100.0

[[timeline]]
kind = "reset"

[[timeline]]
kind = "program"
method = "statistical"

[[timeline]]
kind = "mvm"
times = { start = 1.0, stop = 1e4, num = 3, spacing = "linear" }
batch = 16
"""

# Root attributes that legitimately differ between two runs of the same scenario.
VOLATILE_ATTRS = frozenset({"created_utc", "finished_utc", "wall_time_s", "host", "pid"})


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dataset_bytes(path: str | os.PathLike) -> dict[str, tuple[str, tuple, bytes]]:
    """Every dataset of an HDF5 file: name -> (dtype, shape, raw bytes)."""
    out: dict[str, tuple[str, tuple, bytes]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            value = np.ascontiguousarray(obj[()])
            out[name] = (str(obj.dtype), obj.shape, value.tobytes())

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def stable_attrs(path: str | os.PathLike) -> dict[str, str]:
    """Root attributes without wall-clock times, pid and host (as comparable strings)."""
    with h5py.File(path, "r") as f:
        return {k: repr(np.asarray(v).tolist()) for k, v in f.attrs.items()
                if k not in VOLATILE_ATTRS}


@pytest.fixture
def tiny_toml() -> str:
    return TINY_TOML


@pytest.fixture
def rich_toml() -> str:
    return RICH_TOML


@pytest.fixture
def write_scenario(tmp_path):
    """``write_scenario(text, name="scenario.toml") -> Path`` inside the test's tmp_path."""

    def write(text: str, name: str = "scenario.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def tiny_scenario(write_scenario) -> Path:
    return write_scenario(TINY_TOML)


@pytest.fixture(scope="session")
def tiny_trace(tmp_path_factory) -> Path:
    """A completed trace of TINY_TOML (read only: copy it before changing anything)."""
    from imcsim.runner import run_scenario

    folder = tmp_path_factory.mktemp("tiny_trace")
    scenario = folder / "tiny.toml"
    scenario.write_text(TINY_TOML)
    return run_scenario(scenario, folder / "tiny.h5")


@pytest.fixture
def file_hash():
    return sha256


@pytest.fixture
def read_datasets():
    return dataset_bytes


@pytest.fixture
def read_stable_attrs():
    return stable_attrs


@pytest.fixture(scope="session")
def imcsim_cmd() -> list[str]:
    """The console script, or ``python -m imcsim`` when it is not on PATH."""
    exe = shutil.which("imcsim")
    return [exe] if exe else [sys.executable, "-m", "imcsim"]


@pytest.fixture
def restore_threads():
    """Let a test change numba's thread count; skip where fewer than 2 threads exist."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 Numba threads")
    saved = numba.get_num_threads()
    yield
    numba.set_num_threads(saved)


@pytest.fixture
def quick_benchmark(tmp_path):
    """Run ``benchmarks/<name> --quick --json`` and check what every table benchmark must
    report: exactly ``expected_rows``, each with a positive, finite throughput, ratio and
    time, a baseline among the rows and its label in the printed table, and the given
    section titles. Returns (JSON result, printed table). No timing thresholds."""
    import json
    import math
    import subprocess

    def run(name: str, expected_rows, sections):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--quick",
                               "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(out.read_text())
        rows = {r["id"]: r for r in result["rows"]}
        assert sorted(rows) == sorted(expected_rows)
        for r in rows.values():
            for key in ("throughput", "ratio", "best_s", "median_s"):
                value = r[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (
                    r["id"], key)
            assert r["baseline"] in rows
            assert r["label"] in proc.stdout
        for section in sections:
            assert section in proc.stdout
        assert result["machine"]["numpy"] and result["machine"]["numba_threads_used"] >= 1
        return result, proc.stdout

    return run


@pytest.fixture
def gdp_loops(monkeypatch):
    """Record (counter0, iterations) of every gradient-descent programming loop run while
    the test runs: where its in-loop READ draws sit on the counter axis."""
    from imcsim.scenarios import programming

    seen = []
    real = programming.program_gdp

    def spy(*args, **kwargs):
        seen.append((kwargs["counter0"], kwargs["policy"].iterations))
        return real(*args, **kwargs)

    monkeypatch.setattr(programming, "program_gdp", spy)
    return seen
