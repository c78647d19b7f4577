"""HDF5 trace store: one self-describing file per run.

Layout (every dataset carries a ``units`` attribute and a ``description``)::

    /                      attrs: format="imcsim-trace", format_version, imcsim_version, status
                           ("running" | "complete" | "failed"), seed, scenario_toml,
                           scenario_resolved (JSON of the validated tree), created_utc,
                           finished_utc, wall_time_s, host, pid, error
    /devices/<name>        per-device static parameters and targets
    /series/<name>/data    time series, axis 0 is time, chunked and gzip-compressed
    /series/<name>/t       its time axis (s)
    /events                the event log (t, kind, step, n_devices)
    /metrics/<name>        scalar results

Crash safety. The writer declares every dataset first, then switches the file to HDF5's
single-writer/multiple-reader (SWMR) mode and only appends and flushes. SWMR orders metadata
writes so that the file on disk is consistent after every flush: a run killed with SIGKILL
leaves a file that opens (with ``swmr=True``, which :func:`open_trace` does by itself) with
everything up to its last flush and ``status = "running"``. HDF5 refuses a plain open of such a
file ("file is already open for write"); ``h5py.File(path, "r", swmr=True)`` works.
An existing file is never opened for writing unless the caller asks to overwrite it, and then
the new run is written under a temporary name and renamed over the old file only when it is
complete, so a failed or killed overwrite leaves the old file as it was.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from imcsim._version import __version__
from imcsim.errors import InputError

FORMAT_NAME = "imcsim-trace"
FORMAT_VERSION = 1
STATUS_RUNNING = "running"
STATUS_COMPLETE = "complete"
STATUS_FAILED = "failed"

_EVENT_DTYPE = np.dtype([("t", "f8"), ("kind", "S16"), ("step", "i4"), ("n_devices", "i8")])


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _chunks(sample_shape: tuple[int, ...], itemsize: int, n_hint: int | None,
            target_bytes: int = 1 << 20):
    """Chunk shape ≲ 1 MiB: small samples share a chunk along time (up to the expected
    count), a sample larger than the target is split along its longest axes."""
    sample = list(sample_shape)
    while sample and int(np.prod(sample)) * itemsize > target_bytes:
        k = int(np.argmax(sample))
        sample[k] = max(1, sample[k] // 2)
    sample_bytes = max(int(np.prod(sample)) * itemsize, 1)
    rows = max(1, min(n_hint or 64, target_bytes // sample_bytes))
    return (rows, *sample)


class RunWriter:
    """The datasets of one run, in an HDF5 group (the file's root for a single run, or
    ``/runs/<name>`` in a study file): declare first, then append while the run goes."""

    def __init__(self, owner: TraceWriter, group: h5py.Group):
        self._owner = owner
        self.group = group
        self._series: dict[str, tuple[h5py.Dataset, h5py.Dataset]] = {}
        self._metrics: dict[str, h5py.Dataset] = {}
        self._last_t: dict[str, float] = {}
        self._n_events = 0
        self._events = group.create_dataset(
            "events", shape=(0,), maxshape=(None,), chunks=(256,), dtype=_EVENT_DTYPE)
        self._events.attrs["units"] = json.dumps({"t": "s", "kind": "", "step": "",
                                                  "n_devices": ""})
        self._events.attrs["description"] = (
            "event log in time order: start time, kind, index of the scenario timeline step, "
            "devices touched")

    # -- declaration phase --------------------------------------------------------------
    def set_attrs(self, **attrs):
        for k, v in attrs.items():
            self.group.attrs[k] = v

    def static(self, name: str, data, units: str, description: str, group: str = "devices"):
        """Store a constant array (per-device parameters, targets, indices)."""
        self._owner._check_declaring()
        d = self.group.require_group(group).create_dataset(
            name, data=np.asarray(data), compression="gzip", shuffle=True)
        d.attrs["units"] = units
        d.attrs["description"] = description
        return d

    def declare_series(self, name: str, sample_shape: tuple[int, ...], dtype, units: str,
                       description: str, n: int | None = None, time_units: str = "s",
                       time_description: str = "scenario time of each sample"):
        """Declare a time series of samples of ``sample_shape``; ``n``: expected number of
        samples (sizes the chunks; the series still grows past it)."""
        self._owner._check_declaring()
        g = self.group.require_group("series").create_group(name)
        shape = (0, *sample_shape)
        dtype = np.dtype(dtype)
        data = g.create_dataset("data", shape=shape, maxshape=(None, *sample_shape),
                                dtype=dtype, chunks=_chunks(sample_shape, dtype.itemsize, n),
                                compression="gzip", shuffle=True, fillvalue=np.nan)
        data.attrs["units"] = units
        data.attrs["description"] = description
        data.attrs["time_axis"] = "t"
        t = g.create_dataset("t", shape=(0,), maxshape=(None,), dtype="f8", chunks=(256,))
        t.attrs["units"] = time_units
        t.attrs["description"] = time_description
        self._series[name] = (data, t)

    def declare_metric(self, name: str, units: str, description: str):
        """Declare a scalar result, filled by :meth:`set_metric` (NaN until then)."""
        self._owner._check_declaring()
        d = self.group.require_group("metrics").create_dataset(name, data=np.nan, dtype="f8")
        d.attrs["units"] = units
        d.attrs["description"] = description
        self._metrics[name] = d

    # -- writing phase ------------------------------------------------------------------
    def append(self, name: str, t: float, sample):
        """Append one sample at scenario time ``t`` (s); times must not decrease."""
        data, tax = self._series[name]
        k = data.shape[0]
        last = self._last_t.get(name, -np.inf)
        if t < last:
            raise ValueError(f"series '{name}': time {t} s is before the last sample ({last} s)")
        self._last_t[name] = t
        data.resize(k + 1, axis=0)
        tax.resize(k + 1, axis=0)
        data[k] = sample
        tax[k] = t

    def log_event(self, t: float, kind: str, step: int, n_devices: int):
        self._events.resize(self._n_events + 1, axis=0)
        self._events[self._n_events] = (t, kind.encode(), step, n_devices)
        self._n_events += 1

    def set_metric(self, name: str, value: float):
        self._metrics[name][()] = value

    def set_status(self, status: str, error: str = ""):
        """Status of this run (a study file's runs go pending -> running -> complete)."""
        self.group.attrs["status"] = status
        self.group.attrs["error"] = error

    def flush(self):
        self._owner.flush()


class TraceWriter:
    """Write a trace file: declare datasets, :meth:`begin`, append samples, :meth:`finish`.

    A single-run file keeps its run at the root (the methods of :class:`RunWriter` are
    available on the writer itself); a study file holds several runs, each made with
    :meth:`add_run` before :meth:`begin`. Use as a context manager: an exception inside marks
    the file ``failed`` with the message and re-raises.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False,
                 single_run: bool = True):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise InputError(f"{self.path}: file exists (pass --overwrite to replace it)")
        if not self.path.parent.exists():
            raise InputError(f"{self.path}: directory {self.path.parent} does not exist")
        # Written under a temporary name when replacing, so the old file survives a failure.
        self._write_path = (self.path.with_name(f".{self.path.name}.partial")
                            if self.path.exists() else self.path)
        self._file = h5py.File(self._write_path, "w", libver="latest")
        self._started = False
        self._t_wall0 = _dt.datetime.now(_dt.UTC)
        a = self._file.attrs
        a["format"] = FORMAT_NAME
        a["format_version"] = FORMAT_VERSION
        a["imcsim_version"] = __version__
        a["status"] = STATUS_RUNNING
        a["created_utc"] = self._t_wall0.isoformat(timespec="seconds")
        a["finished_utc"] = ""
        a["wall_time_s"] = np.nan
        a["host"] = socket.gethostname()
        a["pid"] = os.getpid()
        a["error"] = ""
        self.root = RunWriter(self, self._file) if single_run else None
        self.runs: dict[str, RunWriter] = {}

    def __getattr__(self, name):
        # A single-run file: the root run's methods (static, declare_series, append, ...).
        root = self.__dict__.get("root")
        if root is not None and not name.startswith("_"):
            return getattr(root, name)
        raise AttributeError(name)

    def set_attrs(self, **attrs):
        for k, v in attrs.items():
            self._file.attrs[k] = v

    def add_run(self, name: str) -> RunWriter:
        """A run of a study file, in group ``/runs/<name>``, status ``pending``."""
        self._check_declaring()
        if self.root is not None:
            raise RuntimeError("a single-run trace has no named runs")
        run = RunWriter(self, self._file.require_group("runs").create_group(name))
        run.set_status("pending")
        self.runs[name] = run
        return run

    def begin(self):
        """End the declaration phase: from here on the file on disk is always consistent."""
        self._check_declaring()
        self._file.flush()
        self._file.swmr_mode = True
        self._started = True

    def flush(self):
        self._file.flush()

    def finish(self, status: str = STATUS_COMPLETE, error: str = ""):
        """Mark the file ``complete`` (or ``failed``), close, and move into place."""
        if self._file is None:
            return
        now = _dt.datetime.now(_dt.UTC)
        a = self._file.attrs
        a["status"] = status
        a["error"] = error
        a["finished_utc"] = now.isoformat(timespec="seconds")
        a["wall_time_s"] = (now - self._t_wall0).total_seconds()
        self._file.flush()
        self._file.close()
        self._file = None
        if self._write_path != self.path:
            if status == STATUS_COMPLETE:
                os.replace(self._write_path, self.path)
            else:
                os.unlink(self._write_path)

    def _check_declaring(self):
        if self._started:
            raise RuntimeError("datasets must be declared before begin()")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self._file is not None:
                self.finish()
        else:
            self.finish(STATUS_FAILED, f"{exc_type.__name__}: {exc}")
        return False


# ----------------------------------------------------------------------------------------
# Reading


def open_trace(path: str | os.PathLike) -> h5py.File:
    """Open a trace read-only; also opens the file of a run killed mid-way (SWMR)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        if "already open for write" not in str(exc):
            raise InputError(f"{path}: not a readable HDF5 file ({_short(exc)})") from None
        try:
            f = h5py.File(path, "r", swmr=True)
        except OSError as exc2:
            raise InputError(f"{path}: not a readable HDF5 file ({_short(exc2)})") from None
    if f.attrs.get("format") != FORMAT_NAME:
        f.close()
        raise InputError(f"{path}: HDF5 file is not an imcsim trace (no format='{FORMAT_NAME}')")
    return f


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120]


@dataclass
class Series:
    """A time series read back: ``t`` (s), ``data`` (axis 0 = time) and its units."""

    name: str
    t: np.ndarray
    data: np.ndarray
    units: str
    description: str


class Trace:
    """Read API over one run of a trace file: provenance, series by time range and device
    subset, metrics, events. A study file holds several runs: name one with ``run``
    (:meth:`runs` lists them)."""

    def __init__(self, path: str | os.PathLike, run: str | None = None):
        self.path = Path(path)
        self._f = open_trace(path)
        self.run = run
        names = self.runs()
        if run is None and names and "series" not in self._f:
            self._f.close()
            raise InputError(f"{self.path}: holds {len(names)} runs; name one "
                             f"({', '.join(names)})")
        if run is not None and run not in names:
            self._f.close()
            raise InputError(f"{self.path}: no run '{run}' (have: {', '.join(names) or 'none'})")
        self._g = self._f if run is None else self._f["runs"][run]

    def runs(self) -> list[str]:
        """Names of the runs of a study file, in the order they were declared."""
        return run_names(self._f)

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def file(self) -> h5py.File:
        return self._f

    @property
    def group(self) -> h5py.Group:
        """The HDF5 group of this run (the file itself for a single-run trace)."""
        return self._g

    @property
    def attrs(self) -> dict:
        """The run's attributes over the file's (a study run's own settings win)."""
        merged = dict(self._f.attrs.items())
        if self._g is not self._f:
            merged.update(self._g.attrs.items())
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in merged.items()}

    @property
    def status(self) -> str:
        """``complete``, ``failed``, ``running``, ``pending`` or ``interrupted`` (the writer
        is gone before the run or file was complete)."""
        status = str(self._g.attrs.get("status", "unknown"))
        file_running = self._f.attrs.get("status") == STATUS_RUNNING
        if file_running and status in (STATUS_RUNNING, "pending") and \
                not _writer_alive(self._f.attrs):
            return "interrupted"
        return status

    @property
    def scenario(self) -> dict:
        return json.loads(self.attrs["scenario_resolved"])

    def series_names(self) -> list[str]:
        return sorted(self._g["series"]) if "series" in self._g else []

    def series(self, name: str, t_min: float = -np.inf, t_max: float = np.inf,
               devices=None) -> Series:
        """Samples of series ``name`` with t_min ≤ t ≤ t_max; ``devices`` indexes the last
        axis of each sample (flattened sample axes) when given."""
        if name not in self.series_names():
            raise KeyError(f"{self.path}: no series '{name}' (have: "
                           f"{', '.join(self.series_names())})")
        g = self._g["series"][name]
        t = g["t"][:]
        n = min(t.size, g["data"].shape[0])
        t = t[:n]
        sel = np.flatnonzero((t >= t_min) & (t <= t_max))
        data = g["data"][sel[0]:sel[-1] + 1] if sel.size else g["data"][0:0]
        if devices is not None:
            flat = int(np.prod(data.shape[1:]))
            data = data.reshape(data.shape[0], flat)[:, np.asarray(devices)]
        return Series(name, t[sel], data, str(g["data"].attrs["units"]),
                      str(g["data"].attrs.get("description", "")))

    def device(self, name: str) -> np.ndarray:
        return self._g["devices"][name][()]

    def metrics(self) -> dict[str, tuple[float, str]]:
        if "metrics" not in self._g:
            return {}
        return {k: (float(d[()]), str(d.attrs["units"])) for k, d in self._g["metrics"].items()}

    def events(self) -> np.ndarray:
        return self._g["events"][:]


def run_names(f: h5py.File) -> list[str]:
    """Runs of a study file in declaration order ([] for a single-run trace)."""
    if "runs" not in f:
        return []
    order = f.attrs.get("run_order")
    return [str(n) for n in order] if order is not None else sorted(f["runs"])


def file_status(f: h5py.File) -> str:
    """The file's status, ``interrupted`` where it says running but its writer is gone."""
    status = str(f.attrs.get("status", "unknown"))
    if status == STATUS_RUNNING and not _writer_alive(f.attrs):
        return "interrupted"
    return status


def _writer_alive(attrs) -> bool:
    """True when the writing process still runs on this host."""
    if attrs.get("host") != socket.gethostname():
        return True  # cannot tell from here; report what the file says
    try:
        os.kill(int(attrs.get("pid", -1)), 0)
    except (OSError, ValueError):
        return False
    return True
