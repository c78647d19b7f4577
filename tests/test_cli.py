"""The ``imcsim`` command line: bad input, happy path, determinism and crash safety.

Most cases run in-process through click's CliRunner (numba kernels load once per process);
subprocesses are used only where a separate process is the point: the console script's real
stderr, ``--threads`` determinism and SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.config import Scenario, from_dict, parse_scenario
from imcsim.scenarios.pcm_array import PCMArraySimulation
from imcsim.store import Trace

SUBPROCESS_TIMEOUT = 120  # s, for a single run of a tiny scenario (normally ~2 s)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> str:
    """Exit code 2 and exactly one stderr line "imcsim: error: ..." containing ``needles``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imcsim: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def sub(text: str, old: str, new: str) -> str:
    """Replace ``old`` (which must occur exactly once) by ``new``."""
    assert text.count(old) == 1, f"marker {old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------
# Bad scenario input: exit 2, one line naming the field, no output, existing output intact


def _targets(distribution_lines: str):
    def edit(text: str, folder: Path) -> str:
        return sub(text, "[record]", f"[targets]\n{distribution_lines}\n\n[record]")
    return edit


def _targets_file(name: str, array: np.ndarray):
    def edit(text: str, folder: Path) -> str:
        np.save(folder / name, array)
        return _targets(f'distribution = "file"\nfile = "{name}"')(text, folder)
    return edit


WAIT_STEP = '\n[[timeline]]\nkind = "wait"\nduration = {}\n'

BAD_SCENARIOS = [
    pytest.param(lambda t, d: sub(t, "rows = 8", "rows = = 8"),
                 ["malformed TOML", "scenario.toml"], id="malformed-toml"),
    pytest.param(lambda t, d: t + "\n[[timeline]\nkind = 'read'\n",
                 ["malformed TOML"], id="malformed-toml-table"),
    pytest.param(lambda t, d: "bogus = 1\n" + t, ["bogus", "unknown key"], id="unknown-top"),
    pytest.param(lambda t, d: sub(t, "[array]", "[device.pulse]\nfoo = 1.0\n\n[array]"),
                 ["device.pulse.foo", "unknown key"], id="unknown-nested"),
    pytest.param(lambda t, d: sub(t, "[array]", "[device.statistical]\nbar = 1.0\n\n[array]"),
                 ["device.statistical.bar"], id="unknown-nested-statistical"),
    pytest.param(lambda t, d: sub(t, 'kind = "calibrate"', 'kind = "calibrate"\nfoo = 1'),
                 ["timeline[1].foo", "unknown key"], id="unknown-timeline"),
    pytest.param(lambda t, d: sub(t, "read_noise = 0.1e-6 }", "read_noise = 0.1e-6, zap = 1 }"),
                 ["timeline[0].verify.zap"], id="unknown-inline-table"),
    pytest.param(lambda t, d: sub(t, "rows = 8", 'rows = "8"'), ["array.rows"],
                 id="string-for-int"),
    pytest.param(lambda t, d: sub(t, "[array]", '[array]\nweight_scale = "1.0"'),
                 ["array.weight_scale"], id="string-for-number"),
    pytest.param(lambda t, d: sub(t, "rows = 8", "rows = 8.0"), ["array.rows"],
                 id="float-for-int"),
    pytest.param(lambda t, d: sub(t, "batch = 8", "batch = 8.5"), ["timeline[3].batch"],
                 id="float-for-int-timeline"),
    pytest.param(lambda t, d: sub(t, 'kind = "calibrate"\nt = 1.0', 'kind = "calibrate"\nt = true'),
                 ["timeline[1].t"], id="bool-for-number"),
    pytest.param(lambda t, d: sub(t, "seed = 7", "seed = true"), ["run.seed"],
                 id="bool-for-int"),
    pytest.param(lambda t, d: sub(t, "subset = 16", "subset = false"), ["record.subset"],
                 id="bool-for-int-record"),
    pytest.param(lambda t, d: sub(t, "times = [1.0, 100.0, 10000.0]", "times = [-1.0, 100.0]"),
                 ["timeline[3].times"], id="negative-times"),
    pytest.param(lambda t, d: sub(t, "full_times = [1.0, 1e6]", "full_times = [-1.0, 1e6]"),
                 ["timeline[2].full_times"], id="negative-full-times"),
    pytest.param(lambda t, d: sub(t, "start = 1.0, stop = 1e6, num = 4, spacing = \"log\"",
                                  "start = -1.0, stop = 1e6, num = 4, spacing = \"linear\""),
                 ["timeline[2].times"], id="negative-range-start"),
    pytest.param(lambda t, d: sub(t, 'kind = "calibrate"\nt = 1.0',
                                  'kind = "calibrate"\nt = -1.0'),
                 ["timeline[1].t"], id="negative-calibrate-t"),
    pytest.param(lambda t, d: sub(t, "[1.0, 100.0, 10000.0]", "[1.0, 100.0, 100.0]"),
                 ["timeline[3].times"], id="repeated-time"),
    pytest.param(lambda t, d: sub(t, "[1.0, 100.0, 10000.0]", "[1.0, 100.0, 10.0]"),
                 ["timeline[3].times"], id="decreasing-times"),
    pytest.param(lambda t, d: sub(t, "full_times = [1.0, 1e6]", "full_times = [1e6, 1.0]"),
                 ["timeline[2].full_times"], id="decreasing-full-times"),
    pytest.param(lambda t, d: sub(t, "stop = 1e6", "stop = 0.5"), ["timeline[2].times"],
                 id="range-stop-before-start"),
    pytest.param(lambda t, d: sub(t, "[1.0, 100.0, 10000.0]", "[1.0, nan]"),
                 ["timeline[3].times"], id="nan-in-times"),
    pytest.param(lambda t, d: sub(t, "full_times = [1.0, 1e6]", "full_times = [1.0, inf]"),
                 ["timeline[2].full_times"], id="inf-in-full-times"),
    pytest.param(lambda t, d: sub(t, "stop = 1e6", "stop = inf"), ["timeline[2].times"],
                 id="inf-range-stop"),
    pytest.param(lambda t, d: sub(t, 'kind = "calibrate"\nt = 1.0', 'kind = "calibrate"\nt = nan'),
                 ["timeline[1].t"], id="nan-scalar"),
    pytest.param(lambda t, d: sub(t, "[array]", "[array]\nweight_scale = inf"),
                 ["array.weight_scale"], id="inf-scalar"),
    pytest.param(lambda t, d: sub(t, "tolerance = 0.5e-6", "tolerance = nan"),
                 ["timeline[0].verify.tolerance"], id="nan-inline-table"),
    pytest.param(lambda t, d: sub(t, "[array]", "[device.pulse]\nt_pulse = -inf\n\n[array]"),
                 ["device.pulse.t_pulse"], id="minus-inf"),
    pytest.param(lambda t, d: t + WAIT_STEP.format("-5.0"), ["timeline[4].duration"],
                 id="negative-wait-duration"),
    pytest.param(lambda t, d: t + WAIT_STEP.format("0.0"), ["timeline[4].duration"],
                 id="zero-wait-duration"),
    pytest.param(lambda t, d: t + WAIT_STEP.format("nan"), ["timeline[4].duration"],
                 id="nan-wait-duration"),
    pytest.param(lambda t, d: sub(t, 'kind = "read"', 'kind = "read"\nduration = -1.0'),
                 ["timeline[2].duration"], id="negative-duration-read"),
    pytest.param(lambda t, d: sub(t, "seed = 7", "seed = -1"), ["run.seed"],
                 id="negative-seed"),
    pytest.param(lambda t, d: sub(t, "seed = 7", f"seed = {2**63}"), ["run.seed"],
                 id="seed-too-large"),
    pytest.param(lambda t, d: sub(t, "rows = 8", "rows = -8"), ["array.rows"],
                 id="negative-rows"),
    pytest.param(lambda t, d: sub(t, 'kind = "read"', 'kind = "sleep"'), ["timeline[2].kind"],
                 id="unknown-step-kind"),
    pytest.param(lambda t, d: sub(t, "subset = 16", "subset = 1000"), ["record.subset"],
                 id="subset-too-large"),
    pytest.param(_targets('distribution = "file"\nfile = "nope.npy"'),
                 ["targets.file", "nope.npy"], id="targets-file-missing"),
    pytest.param(_targets_file("w.npy", np.zeros((4, 8))), ["targets.file", "w.npy"],
                 id="targets-file-wrong-shape"),
    pytest.param(_targets_file("w.npy", np.full((8, 8), np.nan)), ["targets.file", "w.npy"],
                 id="targets-file-nan"),
    pytest.param(_targets('distribution = "file"'), ["targets.file"],
                 id="targets-file-not-given"),
]


@pytest.mark.parametrize(("edit", "needles"), BAD_SCENARIOS)
def test_bad_scenario_is_rejected(edit, needles, tmp_path, tiny_toml, tiny_trace, file_hash):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(edit(tiny_toml, tmp_path))
    out = tmp_path / "out.h5"

    # No output file yet: none appears (nor a temporary one).
    before = listing(tmp_path)
    assert_one_line_error(invoke("run", scenario, "-o", out), *needles)
    assert listing(tmp_path) == before

    # An existing output file stays byte for byte as it was, with or without --overwrite.
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)
    before = listing(tmp_path)
    # Without --overwrite the message may be about either problem; with it, it must be
    # about the scenario.
    assert_one_line_error(invoke("run", scenario, "-o", out))
    assert file_hash(out) == digest
    assert listing(tmp_path) == before
    assert_one_line_error(invoke("run", scenario, "-o", out, "--overwrite"), *needles)
    assert file_hash(out) == digest
    assert listing(tmp_path) == before


@pytest.mark.parametrize(("args", "needles"), [
    pytest.param(["--seed", "-1"], ["run.seed"], id="negative-seed-option"),
    pytest.param(["--seed", str(2**63)], ["run.seed"], id="seed-option-too-large"),
    pytest.param(["--threads", "0"], ["--threads"], id="zero-threads"),
])
def test_bad_run_option(args, needles, tiny_scenario, tmp_path, tiny_trace, file_hash):
    out = tmp_path / "out.h5"
    before = listing(tmp_path)
    assert_one_line_error(invoke("run", tiny_scenario, "-o", out, *args), *needles)
    assert listing(tmp_path) == before
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)
    assert_one_line_error(invoke("run", tiny_scenario, "-o", out, "--overwrite", *args),
                          *needles)
    assert file_hash(out) == digest


def test_missing_scenario_file(tmp_path, tiny_trace, file_hash):
    missing = tmp_path / "nowhere.toml"
    out = tmp_path / "out.h5"
    assert_one_line_error(invoke("run", missing, "-o", out), str(missing))
    assert listing(tmp_path) == []
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)
    assert_one_line_error(invoke("run", missing, "-o", out, "--overwrite"), str(missing))
    assert file_hash(out) == digest
    assert listing(tmp_path) == ["out.h5"]


def test_output_directory_missing(tiny_scenario, tmp_path):
    out = tmp_path / "nodir" / "out.h5"
    before = listing(tmp_path)
    assert_one_line_error(invoke("run", tiny_scenario, "-o", out), "nodir")
    assert listing(tmp_path) == before


def test_output_is_a_directory(tiny_scenario, tmp_path):
    (tmp_path / "out.h5").mkdir()
    assert_one_line_error(invoke("run", tiny_scenario, "-o", tmp_path / "out.h5"), "out.h5")


def test_existing_output_without_overwrite(tiny_scenario, tmp_path, tiny_trace, file_hash):
    out = tmp_path / "out.h5"
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)
    before = listing(tmp_path)
    assert_one_line_error(invoke("run", tiny_scenario, "-o", out), str(out), "--overwrite")
    assert file_hash(out) == digest
    assert listing(tmp_path) == before


def test_seed_option_with_run_not_a_table(write_scenario, tmp_path):
    """``--seed`` must not turn a bad ``run`` value into a traceback."""
    scenario = write_scenario('run = 5\n\n[[timeline]]\nkind = "read"\ntimes = [1.0]\n')
    assert_one_line_error(invoke("run", scenario, "-o", tmp_path / "a.h5"), "run")
    assert_one_line_error(invoke("run", scenario, "-o", tmp_path / "b.h5", "--seed", "3"),
                          "run")
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_record_subset_zero_is_run_or_rejected(tiny_toml, write_scenario, tmp_path):
    """``record.subset`` is documented ≥ 0: 0 must either run or be rejected cleanly."""
    scenario = write_scenario(sub(tiny_toml, "subset = 16", "subset = 0"))
    out = tmp_path / "out.h5"
    result = invoke("run", scenario, "-o", out)
    if result.exit_code == 0:
        with Trace(out) as tr:
            assert tr.status == "complete"
            assert tr.series("conductance_subset").data.shape == (4, 0)
    else:
        assert_one_line_error(result, "record.subset")
        assert not out.exists()


@pytest.mark.parametrize(("text", "needles"), [
    pytest.param("[run\n", ["malformed TOML"], id="malformed"),
    pytest.param(None, ["no such scenario file"], id="missing-file"),
])
def test_console_script_error_is_one_line(text, needles, tmp_path, imcsim_cmd):
    """The installed console script itself: exit 2, one stderr line, no traceback."""
    scenario = tmp_path / "s.toml"
    if text is not None:
        scenario.write_text(text)
    out = tmp_path / "out.h5"
    proc = subprocess.run([*imcsim_cmd, "run", str(scenario), "-o", str(out)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("imcsim: error:")
    assert str(scenario) in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert not out.exists()


# ----------------------------------------------------------------------------------------
# imcsim info / plot on bad files


def _text_h5(folder: Path) -> Path:
    p = folder / "notes.h5"
    p.write_text("this is not HDF5\n")
    return p


def _foreign_h5(folder: Path) -> Path:
    p = folder / "foreign.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
        f.attrs["format"] = "something-else"
    return p


def _plain_h5(folder: Path) -> Path:
    p = folder / "plain.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    return p


@pytest.mark.parametrize(("make", "needles"), [
    pytest.param(lambda d: d / "missing.h5", ["missing.h5", "no such file"], id="missing"),
    pytest.param(_text_h5, ["notes.h5", "not a readable HDF5 file"], id="text-file"),
    pytest.param(_plain_h5, ["plain.h5", "not an imcsim trace"], id="foreign-no-format"),
    pytest.param(_foreign_h5, ["foreign.h5", "not an imcsim trace"], id="foreign-format"),
    pytest.param(lambda d: d, [], id="directory"),
])
@pytest.mark.parametrize("command", ["info", "plot"])
def test_info_and_plot_reject_bad_files(command, make, needles, tmp_path):
    path = make(tmp_path)
    extra = ["-o", tmp_path / "fig.png"] if command == "plot" else []
    before = listing(tmp_path)
    assert_one_line_error(invoke(command, path, *extra), str(path), *needles)
    assert listing(tmp_path) == before


@pytest.mark.parametrize(("name", "needle"), [
    pytest.param("fig.txt", ".png"), pytest.param("nodir/fig.png", "nodir")])
def test_plot_rejects_bad_figure_name(name, needle, tiny_trace, tmp_path):
    assert_one_line_error(invoke("plot", tiny_trace, "-o", tmp_path / name), needle)
    assert listing(tmp_path) == []


# ----------------------------------------------------------------------------------------
# Happy path


def test_run_info_plot(tiny_scenario, tiny_toml, tmp_path):
    out = tmp_path / "out.h5"
    result = invoke("run", tiny_scenario, "-o", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"wrote {out}" in result.stdout
    assert result.stderr == ""

    info = invoke("info", out)
    assert info.exit_code == 0, info.output
    assert "status: complete" in info.stdout
    assert "run 'tiny'" in info.stdout and "seed 7" in info.stdout
    assert "series/conductance_subset/data" in info.stdout
    assert "metrics:" in info.stdout and "programming_error_rms" in info.stdout
    assert "NOT complete" not in info.stdout

    with Trace(out) as tr:
        assert tr.status == "complete"
        a = tr.attrs
        assert a["scenario_toml"] == tiny_toml
        assert a["seed"] == 7 and a["run_name"] == "tiny"
        assert a["finished_utc"] and np.isfinite(a["wall_time_s"])
        assert a["error"] == ""
        assert from_dict(Scenario, tr.scenario, "") == parse_scenario(tiny_toml).scenario
        n_events = len(tr.events())
        assert n_events == a["n_steps"]  # one logged event per timeline event
        s = tr.series("conductance_subset")
        assert s.data.shape == (4, 16) and s.units == "S"
        assert np.all(np.isfinite(s.data)) and np.all(s.data >= 0)
        assert tr.series("conductance").data.shape == (2, 2, 8, 8)
        assert tr.series("mvm_error").data.shape == (3,)

    fig = tmp_path / "fig.png"
    result = invoke("plot", out, "-o", fig)
    assert result.exit_code == 0, (result.output, result.exception)
    assert fig.stat().st_size > 1000
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_a_run_without_programming(write_scenario, tmp_path):
    """A valid scenario that only observes the RESET array: plot draws it (or says why)."""
    scenario = write_scenario('[array]\nrows = 4\ncols = 4\n\n[record]\nsubset = 4\n\n'
                              '[[timeline]]\nkind = "read"\ntimes = [1.0, 10.0, 100.0]\n\n'
                              '[[timeline]]\nkind = "mvm"\ntimes = [1.0]\n')
    out = tmp_path / "reads.h5"
    assert invoke("run", scenario, "-o", out).exit_code == 0
    fig = tmp_path / "reads.png"
    result = invoke("plot", out, "-o", fig)
    if result.exit_code == 0:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert_one_line_error(result, str(out))


def test_default_output_name(tiny_scenario, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("run", tiny_scenario)
    assert result.exit_code == 0, (result.output, result.exception)
    with Trace(tmp_path / "tiny.h5") as tr:
        assert tr.status == "complete"


def test_seed_option_overrides_scenario(tiny_scenario, tmp_path):
    out = tmp_path / "seeded.h5"
    result = invoke("run", tiny_scenario, "-o", out, "--seed", "12345")
    assert result.exit_code == 0, (result.output, result.exception)
    with Trace(out) as tr:
        assert tr.attrs["seed"] == 12345
        assert tr.scenario["run"]["seed"] == 12345
    assert "seed 12345" in invoke("info", out).stdout


def test_different_seed_gives_different_conductances(tiny_scenario, tiny_trace, tmp_path):
    out = tmp_path / "other.h5"
    assert invoke("run", tiny_scenario, "-o", out, "--seed", "8").exit_code == 0
    with Trace(tiny_trace) as a, Trace(out) as b:
        assert a.attrs["seed"] == 7 and b.attrs["seed"] == 8
        for name in ("g_programmed", "conductance_subset", "conductance", "nu"):
            da, db = a.series(name).data, b.series(name).data
            assert da.shape == db.shape
            assert not np.array_equal(da, db), name
        np.testing.assert_array_equal(a.series("conductance").t, b.series("conductance").t)


def test_overwrite_replaces_only_after_completion(tiny_scenario, tiny_trace, tmp_path,
                                                  monkeypatch, file_hash):
    out = tmp_path / "out.h5"
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)
    partial = tmp_path / ".out.h5.partial"
    seen = []
    original = PCMArraySimulation._observe_mvm

    def spy(self, event, g):
        # Mid-run: the old file is untouched and the new run goes elsewhere.
        seen.append((file_hash(out) == digest, partial.exists()))
        return original(self, event, g)

    monkeypatch.setattr(PCMArraySimulation, "_observe_mvm", spy)
    result = invoke("run", tiny_scenario, "-o", out, "--overwrite", "--seed", "99")
    assert result.exit_code == 0, (result.output, result.exception)
    assert seen and all(same and part for same, part in seen)
    assert not partial.exists()
    assert file_hash(out) != digest
    with Trace(out) as tr:
        assert tr.status == "complete" and tr.attrs["seed"] == 99


def test_failed_overwrite_keeps_old_file(tiny_scenario, tiny_trace, tmp_path, monkeypatch,
                                         file_hash):
    out = tmp_path / "out.h5"
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)

    def boom(self, event, g):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(PCMArraySimulation, "_observe_mvm", boom)
    result = invoke("run", tiny_scenario, "-o", out, "--overwrite")
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    assert file_hash(out) == digest
    assert listing(tmp_path) == ["out.h5", "scenario.toml"]


def test_failure_inside_run_marks_trace_failed(tiny_scenario, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"

    def boom(self, event, g):
        raise RuntimeError("injected failure at mvm")

    monkeypatch.setattr(PCMArraySimulation, "_observe_mvm", boom)
    result = invoke("run", tiny_scenario, "-o", out)
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    with Trace(out) as tr:
        assert tr.status == "failed"
        assert tr.attrs["error"] == "RuntimeError: injected failure at mvm"
        assert tr.attrs["finished_utc"]
        kinds = [k.decode() for k in tr.events()["kind"]]
        assert kinds[0] == "program" and "mvm" not in kinds
        assert tr.series("g_programmed").data.shape[0] == 1
    monkeypatch.undo()
    info = invoke("info", out)
    assert info.exit_code == 0
    assert "status: failed" in info.stdout
    assert "error: RuntimeError: injected failure at mvm" in info.stdout


# ----------------------------------------------------------------------------------------
# Determinism across thread counts (separate processes)


def test_thread_count_does_not_change_results(rich_toml, write_scenario, tmp_path, imcsim_cmd,
                                              read_datasets, read_stable_attrs):
    scenario = write_scenario(rich_toml)
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    outs = {n: tmp_path / f"threads{n}.h5" for n in (1, 2)}
    procs = {n: subprocess.Popen([*imcsim_cmd, "run", str(scenario), "-o", str(out),
                                  "--threads", str(n), "--no-progress"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for n, out in outs.items()}
    try:
        for n, p in procs.items():
            _, err = p.communicate(timeout=SUBPROCESS_TIMEOUT)
            assert p.returncode == 0, (n, err.decode())
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    a, b = (read_datasets(outs[n]) for n in (1, 2))
    assert sorted(a) == sorted(b)
    assert "series/mvm_output/data" in a and "series/conductance/data" in a
    differing = [name for name in a if a[name] != b[name]]
    assert differing == []
    assert read_stable_attrs(outs[1]) == read_stable_attrs(outs[2])
    with Trace(outs[1]) as tr:
        assert tr.status == "complete"
        assert tr.series("g_programmed").t.size == 4  # program, refresh, reset, program
        assert tr.series("mvm_output").data.shape == (6, 16, 16)


# ----------------------------------------------------------------------------------------
# Crash safety: SIGKILL in the middle of a run

SLOW_TOML = """\
[run]
name = "slow"
seed = 3

[array]
rows = 256
cols = 256

[record]
subset = 512

[[timeline]]
kind = "program"
method = "verify"

[[timeline]]
kind = "read"
times = { start = 1.0, stop = 1e8, num = 3000, spacing = "log" }

[[timeline]]
kind = "mvm"
times = { start = 1.5, stop = 1.5e8, num = 3000, spacing = "log" }
batch = 128
"""


def _events_logged(path: Path) -> int:
    """Events in a trace being written (0 while it cannot be opened yet)."""
    try:
        with h5py.File(path, "r", swmr=True) as f:
            if f.attrs.get("format") != "imcsim-trace":
                return 0
            f["events"].refresh()
            return int(f["events"].shape[0])
    except (OSError, KeyError, RuntimeError):
        return 0


def test_sigkill_leaves_readable_interrupted_trace(write_scenario, tmp_path, tiny_trace,
                                                   imcsim_cmd, file_hash):
    scenario = write_scenario(SLOW_TOML)
    earlier = tmp_path / "earlier.h5"
    shutil.copyfile(tiny_trace, earlier)
    earlier_digest = file_hash(earlier)
    out = tmp_path / "slow.h5"

    proc = subprocess.Popen([*imcsim_cmd, "run", str(scenario), "-o", str(out),
                             "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        logged = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists():
                logged = _events_logged(out)
                if logged >= 5:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, ("run ended before it could be killed",
                                     proc.returncode, proc.stderr.read().decode())
        assert logged >= 5, "no events were logged in time"
        # Still running: the file says so, and a reader sees a consistent prefix.
        with Trace(out) as tr:
            assert tr.status == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    info = invoke("info", out)
    assert info.exit_code == 0, (info.output, info.exception)
    assert "status: interrupted" in info.stdout
    assert "status: complete" not in info.stdout
    assert "NOT complete" in info.stdout

    with Trace(out) as tr:
        assert tr.status == "interrupted"
        assert tr.attrs["finished_utc"] == ""
        events = tr.events()
        assert len(events) >= logged
        assert np.all(np.diff(events["t"]) >= 0)
        kinds = [k.decode() for k in events["kind"]]
        assert kinds[0] == "program"
        n_reads = kinds.count("read")
        s = tr.series("conductance_subset")
        # Each read is appended before it is logged; allow one read of slack for what the
        # killed writer had on disk beyond its last flush.
        assert s.t.size == s.data.shape[0] >= max(n_reads - 1, 2)
        assert s.data.shape[1] == 512
        assert np.all(np.isfinite(s.data))
        assert np.all(np.diff(s.t) > 0)
        g = tr.series("g_programmed")
        assert g.data.shape == (1, 2, 256, 256)
        assert np.all(np.isfinite(g.data))
        early = tr.series("conductance_subset", t_max=s.t[1], devices=[0, 511])
        assert early.data.shape == (2, 2)
        np.testing.assert_array_equal(early.data, s.data[:2][:, [0, 511]])
        m = tr.series("mvm_error")
        assert m.t.size == m.data.shape[0]

    # The plain HDF5 read path works as well.
    with h5py.File(out, "r", swmr=True) as f:
        assert f.attrs["status"] == "running"
    assert file_hash(earlier) == earlier_digest
    assert not (tmp_path / ".slow.h5.partial").exists()
    with Trace(earlier) as tr:
        assert tr.status == "complete"


def test_sigkill_during_overwrite_keeps_old_file(write_scenario, tmp_path, tiny_trace,
                                                 imcsim_cmd, file_hash):
    """A killed ``--overwrite`` run leaves the old trace as it was."""
    scenario = write_scenario(SLOW_TOML)
    out = tmp_path / "out.h5"
    shutil.copyfile(tiny_trace, out)
    digest = file_hash(out)
    partial = tmp_path / ".out.h5.partial"
    proc = subprocess.Popen([*imcsim_cmd, "run", str(scenario), "-o", str(out), "--overwrite",
                             "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and _events_logged(partial) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "run ended before it could be killed"
        assert file_hash(out) == digest
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert file_hash(out) == digest
    with Trace(out) as tr:
        assert tr.status == "complete" and tr.attrs["run_name"] == "tiny"
    # The half-written replacement is recognisable as such.
    with Trace(partial) as tr:
        assert tr.status == "interrupted" and tr.attrs["run_name"] == "slow"
        assert json.loads(tr.attrs["scenario_resolved"])["run"]["name"] == "slow"


def test_query_prints_scalar_series_and_summaries(tiny_trace):
    from imcsim.store import Trace

    with Trace(tiny_trace) as tr:
        err = tr.series("mvm_error")
        nu = tr.series("nu")
    res = invoke("query", tiny_trace, "mvm_error")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("# mvm_error") and lines[1].split() == ["t", "(s)", "mvm_error"]
    values = np.array([[float(v) for v in line.split()] for line in lines[2:]])
    assert np.allclose(values[:, 0], err.t, rtol=1e-6)
    assert np.allclose(values[:, 1], err.data, rtol=1e-7)
    res = invoke("query", tiny_trace, "nu")
    mean = float(res.output.splitlines()[2].split()[1])
    assert mean == pytest.approx(nu.data[0].mean(), rel=1e-5)
    res = invoke("query", tiny_trace, "no_such_series")
    assert res.exit_code == 2 and "no series 'no_such_series'" in res.stderr


def test_plot_of_a_study_of_study_runs_asks_for_one_run(tmp_path):
    """A study file whose runs are spiking studies has no combined figure: ``plot`` says to
    pick a run (one line, exit 2), and draws that run's figure with --run."""
    from click.testing import CliRunner

    from imcsim.cli import main

    toml = tmp_path / "study.toml"
    toml.write_text('[run]\nname = "two"\nseed = 1\n'
                    '[spiking]\nhidden = []\nepochs = 1\nseeds = [0]\nmodels = ["top_down"]\n'
                    'methods = ["exact"]\n'
                    '[[variant]]\nname = "a"\n"spiking.lr" = 0.01\n'
                    '[[variant]]\nname = "b"\n"spiking.lr" = 0.02\n')
    out = tmp_path / "study.h5"
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(toml), "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["plot", str(out), "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 2
    assert "--run NAME" in result.output and "runs: a, b" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["plot", str(out), "--run", "b", "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f.png").stat().st_size > 10_000
