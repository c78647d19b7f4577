"""Sweeps on dask.distributed: seeds, bit-identity with serial runs, faults and resume."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.errors import InputError
from imcsim.runner import run_scenario
from imcsim.sweep import load_sweep, run_seed, run_sweep

BASE = """
[run]
name = "base"
seed = 1
[array]
rows = 16
cols = 16
[record]
subset = 8
[[timeline]]
kind = "program"
verify = { differential = true }
[[timeline]]
kind = "calibrate"
t = 1.0
[[timeline]]
kind = "mvm"
times = [1.0, 3600.0, 86400.0]
"""

SWEEP = """
[sweep]
name = "tol_x_rows"
base = "base.toml"
seed = 7
repeats = 2
[[sweep.axis]]
path = "timeline[0].verify.tolerance"
values = [0.25e-6, 0.5e-6, 1e-6]
[[sweep.axis]]
path = "array.rows"
values = [8, 16]
"""


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    return path


def _datasets(path):
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = np.ascontiguousarray(obj[()]).tobytes()

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def test_seeds_depend_only_on_each_runs_coordinates(spec, tmp_path):
    sweep = load_sweep(spec)
    assert len(sweep.runs) == 12 and len({r.seed for r in sweep.runs}) == 12
    # one more axis value: every existing run keeps its seed
    spec.write_text(SWEEP.replace("values = [8, 16]", "values = [8, 16, 32]"))
    bigger = {(r.values, r.repeat): r.seed for r in load_sweep(spec).runs}
    assert all(bigger[(r.values, r.repeat)] == r.seed for r in sweep.runs)
    assert run_seed(7, {"a": 1.0}, 0) != run_seed(7, {"a": 1.0}, 1) != run_seed(8, {"a": 1.0}, 1)


def test_sweep_runs_equal_serial_runs_bit_for_bit(spec, tmp_path):
    sweep = load_sweep(spec)
    status = run_sweep(sweep, tmp_path / "out", workers=2)
    assert set(status.values()) == {"complete"}
    for run in sweep.runs:
        serial = run_scenario(sweep.scenario(run), tmp_path / f"serial{run.name}.h5")
        assert _datasets(tmp_path / "out" / "runs" / f"{run.name}.h5") == _datasets(serial)
    with h5py.File(tmp_path / "out" / "sweep.h5", "r") as f:
        assert f["runs/0007"].attrs["status"] == "complete"  # the external link opens run 7
        assert [s.decode() for s in f["table/status"][:]] == ["complete"] * 12


def test_xarray_view_matches_the_run_files(spec, tmp_path):
    from imcsim.analysis.sweep import open_sweep

    sweep = load_sweep(spec)
    run_sweep(sweep, tmp_path / "out", workers=2)
    ds = open_sweep(tmp_path / "out")
    assert ds["mvm_error_first"].shape == (3, 2, 2)
    assert ds["programming_error_rms"].attrs["units"] == "S"
    for run in sweep.runs:
        with h5py.File(tmp_path / "out" / "runs" / f"{run.name}.h5", "r") as f:
            value = f["metrics/mvm_error_first"][()]
        sel = ds["mvm_error_first"].sel({"timeline_0__verify__tolerance": run.values[0],
                                         "array__rows": run.values[1], "repeat": run.repeat})
        assert float(sel) == value
    out = CliRunner().invoke(main, ["plot", str(tmp_path / "out"), "-o",
                                    str(tmp_path / "s.png")])
    assert out.exit_code == 0 and (tmp_path / "s.png").stat().st_size > 5000


def test_resume_runs_only_what_is_missing(spec, tmp_path):
    sweep = load_sweep(spec)
    out = tmp_path / "out"
    run_sweep(sweep, out, workers=2)
    files = sorted((out / "runs").glob("*.h5"))
    stamps = {p.name: p.stat().st_mtime_ns for p in files}
    for p in files[:3]:
        p.unlink()
    with pytest.raises(InputError, match="--resume"):
        run_sweep(sweep, out, workers=2)
    status = run_sweep(sweep, out, workers=2, resume=True)
    assert set(status.values()) == {"complete"}
    for p in files[3:]:
        assert p.stat().st_mtime_ns == stamps[p.name]  # complete runs were not run again


def test_a_killed_worker_has_its_task_run_elsewhere(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("IMCSIM_SWEEP_KILL_WORKER", "1")
    sweep = load_sweep(spec)
    status = run_sweep(sweep, tmp_path / "out", workers=2)
    assert (tmp_path / "out" / ".killed-worker").exists()  # a worker did die
    assert set(status.values()) == {"complete"}
    assert len(list((tmp_path / "out" / "runs").glob("*.h5"))) == 12
    assert not list((tmp_path / "out" / "runs").glob(".*partial"))


def test_a_killed_driver_then_resume_loses_nothing(spec, tmp_path):
    slow = SWEEP.replace("values = [8, 16]", "values = [8, 16, 24, 32, 40, 48, 56, 64]")
    spec.write_text(slow.replace("repeats = 2", "repeats = 3"))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "imcsim", "sweep", str(spec), "-o", str(out),
                             "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "runs").glob("*.h5"))) < 5:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its LocalCluster
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.h5")}
    assert 5 <= len(before) < 72
    result = CliRunner().invoke(main, ["sweep", str(spec), "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "72 complete" in result.output
    for name, stamp in before.items():
        assert (out / "runs" / name).stat().st_mtime_ns == stamp
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "72 complete, 0 failed, 0 pending" in info.output


@pytest.mark.parametrize("change, needle", [
    (('path = "array.rows"', 'path = "array.rowz"'), "array.rowz: unknown key"),
    (('values = [8, 16]', 'values = []'), "sweep.axis[1].values"),
    (('values = [8, 16]', 'values = ["a", "b"]'), "array.rows: expected an integer"),
    (('base = "base.toml"', 'base = "nope.toml"'), "sweep.base: no such scenario file"),
    (('repeats = 2', 'repeats = 0'), "sweep.repeats"),
    (('[sweep]', '[sweep]\nfoo = 1'), "sweep.foo: unknown key"),
])
def test_bad_sweeps_fail_with_one_line(spec, tmp_path, change, needle):
    spec.write_text(SWEEP.replace(*change))
    result = CliRunner().invoke(main, ["sweep", str(spec), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert needle in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_folder_with_another_sweep_is_refused_untouched(spec, tmp_path):
    out = tmp_path / "out"
    run_sweep(load_sweep(spec), out, workers=1)
    before = (out / "sweep.h5").read_bytes()
    spec.write_text(SWEEP.replace("seed = 7", "seed = 8"))
    result = CliRunner().invoke(main, ["sweep", str(spec), "-o", str(out)])
    assert result.exit_code == 2 and "holds another sweep" in result.stderr
    assert (out / "sweep.h5").read_bytes() == before


def test_a_scheduler_that_does_not_answer_is_a_clear_error(spec, tmp_path):
    t0 = time.time()
    result = CliRunner().invoke(main, ["sweep", str(spec), "-o", str(tmp_path / "out"),
                                       "--scheduler", "tcp://127.0.0.1:9", "--timeout", "2"])
    assert result.exit_code == 2
    assert "no answer within 2 s" in result.stderr
    assert time.time() - t0 < 30
