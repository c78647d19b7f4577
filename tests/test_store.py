"""HDF5 trace store: TraceWriter / Trace round trip, selection, failure and overwrite."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from imcsim.errors import InputError
from imcsim.store import FORMAT_NAME, FORMAT_VERSION, Trace, TraceWriter, open_trace

TIMES = [0.5, 1.0, 2.0, 4.0, 8.0]
BASE = np.arange(6.0).reshape(2, 3) * 1e-6


def _sample(k: int) -> np.ndarray:
    return BASE * (k + 1)


def write_demo(path, *, finish: bool = True) -> None:
    """A small trace with two series, statics, metrics and an event log."""
    w = TraceWriter(path)
    w.set_attrs(run_name="demo", seed=5, scenario_resolved="{}")
    w.static("w_target", np.arange(4.0).reshape(2, 2), "1", "weights")
    w.static("index", np.arange(3), "1", "indices", group="extra")
    w.declare_series("g", (2, 3), "f8", "S", "conductances [pair, col]", n=len(TIMES))
    w.declare_series("err", (), "f8", "1", "a scalar per time")
    w.declare_metric("rms", "S", "an rms")
    w.declare_metric("never", "1", "never set")
    w.begin()
    for k, t in enumerate(TIMES):
        w.append("g", t, _sample(k))
        w.append("err", t, 0.1 * k)
        w.log_event(t, "read", 2, 6)
        w.flush()
    w.set_metric("rms", 3e-7)
    if finish:
        w.finish()


def all_datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found = {}
    f.visititems(lambda name, obj: found.update({name: obj})
                 if isinstance(obj, h5py.Dataset) else None)
    return found


def test_round_trip(tmp_path):
    path = tmp_path / "demo.h5"
    write_demo(path)
    with Trace(path) as tr:
        assert tr.status == "complete"
        a = tr.attrs
        assert a["format"] == FORMAT_NAME and a["format_version"] == FORMAT_VERSION
        assert a["run_name"] == "demo" and a["seed"] == 5
        assert a["error"] == "" and a["finished_utc"] and a["wall_time_s"] >= 0
        assert tr.series_names() == ["err", "g"]

        g = tr.series("g")
        np.testing.assert_array_equal(g.t, TIMES)
        np.testing.assert_array_equal(g.data, np.stack([_sample(k) for k in range(len(TIMES))]))
        assert g.units == "S" and g.description == "conductances [pair, col]"
        err = tr.series("err")
        assert err.data.shape == (len(TIMES),) and err.units == "1"
        np.testing.assert_allclose(err.data, 0.1 * np.arange(len(TIMES)))

        np.testing.assert_array_equal(tr.device("w_target"), np.arange(4.0).reshape(2, 2))
        np.testing.assert_array_equal(tr.file["extra/index"][()], np.arange(3))

        metrics = tr.metrics()
        assert set(metrics) == {"rms", "never"}
        assert metrics["rms"] == (3e-7, "S")
        assert np.isnan(metrics["never"][0]) and metrics["never"][1] == "1"

        ev = tr.events()
        assert ev.dtype.names == ("t", "kind", "step", "n_devices")
        np.testing.assert_array_equal(ev["t"], TIMES)
        assert list(ev["kind"]) == [b"read"] * len(TIMES)
        assert list(ev["step"]) == [2] * len(TIMES)
        assert list(ev["n_devices"]) == [6] * len(TIMES)

        # Every dataset, series time axes and the event log included, carries its units.
        datasets = all_datasets(tr.file)
        assert {"events", "series/g/t", "series/g/data", "devices/w_target", "metrics/rms",
                "extra/index"} <= set(datasets)
        for name, d in datasets.items():
            assert "units" in d.attrs, name
            assert "description" in d.attrs, name
        assert tr.file["series/g/t"].attrs["units"] == "s"


def test_series_selection_by_time_and_devices(tmp_path):
    path = tmp_path / "demo.h5"
    write_demo(path)
    full = np.stack([_sample(k) for k in range(len(TIMES))])
    with Trace(path) as tr:
        s = tr.series("g", 1.0, 4.0)  # inclusive on both ends
        np.testing.assert_array_equal(s.t, [1.0, 2.0, 4.0])
        np.testing.assert_array_equal(s.data, full[1:4])

        s = tr.series("g", t_min=3.0)
        np.testing.assert_array_equal(s.t, [4.0, 8.0])
        np.testing.assert_array_equal(s.data, full[3:])

        s = tr.series("g", t_max=0.5)
        np.testing.assert_array_equal(s.t, [0.5])
        np.testing.assert_array_equal(s.data, full[:1])

        # devices index the flattened sample axes.
        s = tr.series("g", devices=[0, 4, 5])
        assert s.data.shape == (len(TIMES), 3)
        np.testing.assert_array_equal(s.data, full.reshape(len(TIMES), -1)[:, [0, 4, 5]])

        s = tr.series("g", 0.7, 2.5, devices=np.array([5, 1]))
        np.testing.assert_array_equal(s.t, [1.0, 2.0])
        np.testing.assert_array_equal(s.data, full[1:3].reshape(2, -1)[:, [5, 1]])

        s = tr.series("g", 2.1, 3.9)  # between samples: empty
        assert s.t.size == 0 and s.data.shape == (0, 2, 3)

        with pytest.raises(KeyError, match="nope"):
            tr.series("nope")


def test_empty_time_range_with_device_subset(tmp_path):
    """An empty selection with ``devices`` is an empty (0, n_selected) array."""
    path = tmp_path / "demo.h5"
    write_demo(path)
    with Trace(path) as tr:
        s = tr.series("g", 100.0, 200.0, devices=[0, 1])
        assert s.t.size == 0
        assert s.data.shape == (0, 2)


def test_declaring_after_begin_raises(tmp_path):
    with TraceWriter(tmp_path / "t.h5") as w:
        w.declare_series("x", (2,), "f8", "1", "x")
        w.begin()
        with pytest.raises(RuntimeError, match="before begin"):
            w.declare_series("y", (2,), "f8", "1", "y")
        with pytest.raises(RuntimeError):
            w.declare_metric("m", "1", "m")
        with pytest.raises(RuntimeError):
            w.static("s", np.zeros(3), "1", "s")
        with pytest.raises(RuntimeError):
            w.begin()
        w.append("x", 0.0, [1.0, 2.0])
    with Trace(tmp_path / "t.h5") as tr:
        assert tr.status == "complete"
        assert tr.series_names() == ["x"]
        np.testing.assert_array_equal(tr.series("x").data, [[1.0, 2.0]])


def test_exception_marks_failed_and_reraises(tmp_path):
    path = tmp_path / "t.h5"
    with pytest.raises(ValueError, match="bad sample"), TraceWriter(path) as w:
        w.declare_series("x", (), "f8", "1", "x")
        w.begin()
        w.append("x", 1.0, 3.0)
        w.flush()
        raise ValueError("bad sample")
    with Trace(path) as tr:
        assert tr.status == "failed"
        assert tr.attrs["error"] == "ValueError: bad sample"
        assert tr.attrs["finished_utc"]
        np.testing.assert_array_equal(tr.series("x").data, [3.0])


def test_writer_refuses_existing_file_and_missing_folder(tmp_path, file_hash):
    path = tmp_path / "t.h5"
    write_demo(path)
    digest = file_hash(path)
    with pytest.raises(InputError, match="file exists"):
        TraceWriter(path)
    assert file_hash(path) == digest
    with pytest.raises(InputError, match="does not exist"):
        TraceWriter(tmp_path / "nodir" / "t.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]


def test_overwrite_replaces_on_completion_only(tmp_path, file_hash):
    path = tmp_path / "t.h5"
    write_demo(path)
    digest = file_hash(path)
    partial = tmp_path / ".t.h5.partial"

    w = TraceWriter(path, overwrite=True)
    w.set_attrs(run_name="new")
    w.declare_series("x", (), "f8", "1", "x")
    w.begin()
    w.append("x", 0.0, 1.0)
    w.flush()
    assert partial.exists()
    assert file_hash(path) == digest  # old file untouched while the new run is written
    w.finish()
    assert not partial.exists()
    with Trace(path) as tr:
        assert tr.status == "complete" and tr.attrs["run_name"] == "new"

    # A failed overwrite leaves the previous file and no temporary file.
    digest = file_hash(path)
    with pytest.raises(RuntimeError), TraceWriter(path, overwrite=True) as w:
        w.begin()
        raise RuntimeError("stop")
    assert file_hash(path) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.h5"]


def test_open_trace_rejects_foreign_files(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(5)
    with pytest.raises(InputError, match="not an imcsim trace"):
        open_trace(foreign)
    with pytest.raises(InputError, match="not an imcsim trace"):
        Trace(foreign)

    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        open_trace(text)
    with pytest.raises(InputError, match="no such file"):
        open_trace(tmp_path / "missing.h5")

    good = tmp_path / "good.h5"
    write_demo(good)
    f = open_trace(good)
    try:
        assert f.attrs["format"] == FORMAT_NAME
    finally:
        f.close()


def test_killed_writer_reads_back_as_interrupted(tmp_path):
    """A writer process that dies after begin() leaves a readable, 'interrupted' trace."""
    path = tmp_path / "killed.h5"
    code = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from imcsim.store import TraceWriter
        w = TraceWriter({str(path)!r})
        w.set_attrs(run_name="killed")
        w.declare_series("x", (3,), "f8", "S", "x")
        w.declare_metric("m", "1", "m")
        w.begin()
        for k in range(4):
            w.append("x", float(k), np.full(3, k * 1.0))
            w.log_event(float(k), "read", 0, 3)
            w.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    with Trace(path) as tr:
        assert tr.status == "interrupted"
        assert tr.attrs["finished_utc"] == ""
        s = tr.series("x")
        np.testing.assert_array_equal(s.t, [0.0, 1.0, 2.0, 3.0])
        np.testing.assert_array_equal(s.data, np.repeat(np.arange(4.0), 3).reshape(4, 3))
        np.testing.assert_array_equal(tr.series("x", 1.0, 2.0, devices=[2]).data, [[1.0], [2.0]])
        assert len(tr.events()) == 4
        assert np.isnan(tr.metrics()["m"][0])


def test_run_trace_is_self_describing(tiny_trace):
    """A trace written by a run: units everywhere, subset selection matches full reads."""
    with Trace(tiny_trace) as tr:
        for name, d in all_datasets(tr.file).items():
            assert "units" in d.attrs, name
        idx = tr.device("subset_index")
        sub = tr.series("conductance_subset")
        full = tr.series("conductance")
        assert full.t.size == 2
        for k, t in enumerate(full.t):
            row = int(np.flatnonzero(sub.t == t)[0])
            np.testing.assert_array_equal(sub.data[row], full.data[k].reshape(-1)[idx])
        picked = tr.series("conductance", t_min=full.t[1], devices=idx[:3])
        np.testing.assert_array_equal(picked.data, full.data[1:].reshape(1, -1)[:, idx[:3]])
        assert tr.series("g_programmed").units == "S"
        assert tr.series("t_programmed").units == "s"
        assert tr.metrics()["programming_error_rms"][1] == "S"
