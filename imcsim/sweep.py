"""Parameter sweeps and Monte-Carlo repeats of a scenario, run on dask.distributed.

A sweep file (TOML)::

    [sweep]
    name = "tol_x_size"
    base = "pcm_drift.toml"          # a scenario file, relative to the sweep file
    seed = 7                         # the sweep seed
    repeats = 3                      # Monte-Carlo repeats of every point
    mode = "cross"                   # "cross": every combination; "zip": axes side by side

    [[sweep.axis]]
    path = "timeline[0].verify.tolerance"     # a dotted parameter path of the scenario
    values = [0.25e-6, 0.5e-6, 1e-6]          # or range = {start, stop, num, spacing}

**Seeds.** Run seed = the first 63 bits of SHA-256 over the canonical JSON of (sweep seed,
the run's (path, value) pairs sorted by path, repeat index). It depends only on the run's
own coordinates, so adding a value to an axis, or more repeats, never changes the runs that
were there (adding an axis does: every run gains a coordinate).

**Files.** ``DIR/runs/NNNN.h5`` is run NNNN's ordinary trace; a task writes it under a
temporary name and renames it when complete, so a file under its final name is whole.
``DIR/sweep.h5`` holds the spec, the table of runs (axis values, repeat, seed, file, status,
wall time) and HDF5 external links ``runs/NNNN`` to every run file; it is rewritten
atomically after each completed run, and ``--resume`` trusts only the run files themselves.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from imcsim.config import LoadedScenario, Scenario, TimeRange, apply_overrides, from_dict
from imcsim.errors import InputError

SWEEP_FORMAT = "imcsim-sweep"


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its index, axis values, repeat and seed."""

    index: int
    values: tuple  # one value per axis
    repeat: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.index:04d}"


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: the base scenario text, axes and the list of runs."""

    name: str
    text: str  # the sweep file
    base_text: str
    base_path: Path
    axes: tuple[tuple[str, tuple], ...]  # (path, values)
    repeats: int
    seed: int
    mode: str
    runs: tuple[SweepRun, ...]

    @property
    def fingerprint(self) -> str:
        """Identifies the sweep: spec and base scenario."""
        return hashlib.sha256((self.text + "\0" + self.base_text).encode()).hexdigest()[:16]

    def overrides(self, run: SweepRun) -> dict:
        return {path: value for (path, _), value in zip(self.axes, run.values)} | {
            "run.seed": run.seed}

    def scenario(self, run: SweepRun) -> LoadedScenario:
        data = apply_overrides(tomllib.loads(self.base_text), self.overrides(run))
        data.setdefault("run", {})["name"] = f"{self.name}-{run.name}"
        sc = from_dict(Scenario, data, "")
        return LoadedScenario(sc, self.base_text, self.base_path)


def run_seed(sweep_seed: int, coordinates: dict, repeat: int) -> int:
    """Seed of one run: the first 63 bits of SHA-256 over the canonical JSON of
    (sweep seed, sorted (path, value) pairs, repeat index)."""
    key = json.dumps([sweep_seed, sorted(coordinates.items()), repeat], default=float)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def _axis_values(axis: dict, where: str) -> tuple:
    unknown = sorted(set(axis) - {"path", "values", "range"})
    if unknown:
        raise InputError(f"{where}.{unknown[0]}: unknown key (allowed: path, range, values)")
    if not isinstance(axis.get("path"), str) or not axis["path"]:
        raise InputError(f"{where}.path: required, a dotted parameter path")
    if ("values" in axis) == ("range" in axis):
        raise InputError(f"{where}: give either values or range")
    if "range" in axis:
        r = from_dict(TimeRange, axis["range"], f"{where}.range")
        return tuple(float(v) for v in r.values())
    values = axis["values"]
    if not isinstance(values, list) or not values:
        raise InputError(f"{where}.values: expected a non-empty list")
    return tuple(values)


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and validate a sweep file and every run's scenario (nothing is run)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such sweep file")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: malformed TOML: {exc}") from None
    try:
        return _parse(data, text, path)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _parse(data: dict, text: str, path: Path) -> Sweep:
    unknown = sorted(set(data) - {"sweep"})
    if unknown:
        raise InputError(f"{unknown[0]}: unknown key (allowed: sweep)")
    spec = data.get("sweep")
    if not isinstance(spec, dict):
        raise InputError("sweep: a [sweep] table is required")
    allowed = {"name", "base", "seed", "repeats", "mode", "axis"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise InputError(f"sweep.{unknown[0]}: unknown key "
                         f"(allowed: {', '.join(sorted(allowed))})")
    base = spec.get("base")
    if not isinstance(base, str) or not base:
        raise InputError("sweep.base: required, the path of a scenario file")
    base_path = (path.parent / base).resolve()
    if not base_path.exists():
        raise InputError(f"sweep.base: no such scenario file {base_path}")
    base_text = base_path.read_text()
    seed, repeats = spec.get("seed", 0), spec.get("repeats", 1)
    for name, value, low in (("seed", seed, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"sweep.{name}: expected an integer ≥ {low}, got {value!r}")
    mode = spec.get("mode", "cross")
    if mode not in ("cross", "zip"):
        raise InputError(f"sweep.mode: must be 'cross' or 'zip', got {mode!r}")
    axes_spec = spec.get("axis", [])
    if not isinstance(axes_spec, list) or not axes_spec:
        raise InputError("sweep.axis: at least one [[sweep.axis]] table is required")
    axes = tuple((a.get("path"), _axis_values(a, f"sweep.axis[{k}]")) if isinstance(a, dict)
                 else (None, ()) for k, a in enumerate(axes_spec))
    if mode == "zip" and len({len(v) for _, v in axes}) > 1:
        raise InputError("sweep.axis: zipped axes need the same number of values")
    points = (list(zip(*(v for _, v in axes))) if mode == "zip"
              else list(itertools.product(*(v for _, v in axes))))
    runs = []
    for values in points:
        coords = {p: v for (p, _), v in zip(axes, values)}
        for rep in range(repeats):
            runs.append(SweepRun(len(runs), tuple(values), rep, run_seed(seed, coords, rep)))
    sweep = Sweep(spec.get("name", path.stem), text, base_text, base_path, axes, repeats,
                  seed, mode, tuple(runs))
    # Every run must be a valid scenario before anything runs.
    checked = set()
    for run in sweep.runs:
        if run.values in checked:
            continue
        checked.add(run.values)
        try:
            sweep.scenario(run)
        except InputError as exc:
            coords = ", ".join(f"{p} = {v!r}" for (p, _), v in zip(axes, run.values))
            raise InputError(f"run {run.name} ({coords}): {exc}") from None
    return sweep


# ----------------------------------------------------------------------------------------
# Running


def run_file(directory: Path, run: SweepRun) -> Path:
    return directory / "runs" / f"{run.name}.h5"


def execute_run(sweep: Sweep, run: SweepRun, directory: str) -> tuple[int, float]:
    """Run one sweep run into its file (a dask task). Written under a temporary name and
    renamed when complete; an existing complete file is left alone."""
    from imcsim.runner import run_scenario

    final = run_file(Path(directory), run)
    if final.exists():
        return run.index, 0.0
    _fault_injection(run, Path(directory))
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    if partial.exists():
        partial.unlink()
    t0 = time.perf_counter()
    run_scenario(sweep.scenario(run), partial, threads=1)
    os.replace(partial, final)
    return run.index, time.perf_counter() - t0


def _fault_injection(run: SweepRun, directory: Path) -> None:
    """For the fault-tolerance tests: with IMCSIM_SWEEP_KILL_WORKER=1 in the workers'
    environment, the worker that first starts run 0000 kills its own process (once)."""
    if os.environ.get("IMCSIM_SWEEP_KILL_WORKER") != "1" or run.index != 0:
        return
    marker = directory / ".killed-worker"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os._exit(1)


def write_index(sweep: Sweep, directory: Path, status: dict[int, str],
                wall: dict[int, float]) -> Path:
    """(Re)write DIR/sweep.h5 atomically: spec, table of runs, external links."""
    target = directory / "sweep.h5"
    tmp = directory / ".sweep.h5.tmp"
    n = len(sweep.runs)
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = SWEEP_FORMAT
        f.attrs["name"] = sweep.name
        f.attrs["sweep_toml"] = sweep.text
        f.attrs["base_toml"] = sweep.base_text
        f.attrs["fingerprint"] = sweep.fingerprint
        f.attrs["axes"] = json.dumps([p for p, _ in sweep.axes])
        f.attrs["repeats"] = sweep.repeats
        f.attrs["mode"] = sweep.mode
        f.attrs["seed"] = sweep.seed
        table = f.create_group("table")
        table.create_dataset("index", data=np.arange(n))
        table.create_dataset("repeat", data=[r.repeat for r in sweep.runs])
        table.create_dataset("seed", data=np.array([r.seed for r in sweep.runs],
                                                   dtype=np.int64))
        for k, (path, _) in enumerate(sweep.axes):
            vals = [r.values[k] for r in sweep.runs]
            d = table.create_dataset(f"axis{k}", data=np.array(vals))
            d.attrs["path"] = path
        table.create_dataset("file", data=[f"runs/{r.name}.h5".encode() for r in sweep.runs])
        table.create_dataset("status", data=[status.get(r.index, "pending").encode()
                                             for r in sweep.runs])
        d = table.create_dataset("wall_time", data=[wall.get(r.index, np.nan)
                                                    for r in sweep.runs])
        d.attrs["units"] = "s"
        runs = f.create_group("runs")
        for r in sweep.runs:
            runs[r.name] = h5py.ExternalLink(f"runs/{r.name}.h5", "/")
    os.replace(tmp, target)
    return target


def check_directory(sweep: Sweep, directory: Path, resume: bool) -> None:
    """Refuse a folder that holds another sweep, or this one without --resume."""
    index = directory / "sweep.h5"
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a folder")
    if not index.exists():
        if directory.exists() and any(directory.iterdir()) and not resume:
            raise InputError(f"{directory}: folder is not empty and holds no sweep")
        return
    try:
        with h5py.File(index, "r") as f:
            fingerprint = f.attrs.get("fingerprint")
            fmt = f.attrs.get("format")
    except OSError:
        raise InputError(f"{index}: not a readable sweep index") from None
    if fmt != SWEEP_FORMAT or fingerprint != sweep.fingerprint:
        raise InputError(f"{directory}: holds another sweep; choose another folder")
    if not resume:
        raise InputError(f"{directory}: holds this sweep already (pass --resume to finish it)")


def run_sweep(sweep: Sweep, directory: str | os.PathLike, *, workers: int = 2,
              threads_per_worker: int = 1, scheduler: str | None = None,
              resume: bool = False, progress: bool = False, retries: int = 2,
              timeout: float = 10.0) -> dict[int, str]:
    """Run every run not yet complete on dask.distributed; returns the status of each."""
    directory = Path(directory)
    check_directory(sweep, directory, resume)
    (directory / "runs").mkdir(parents=True, exist_ok=True)
    status = {r.index: ("complete" if run_file(directory, r).exists() else "pending")
              for r in sweep.runs}
    wall: dict[int, float] = {}
    write_index(sweep, directory, status, wall)
    pending = [r for r in sweep.runs if status[r.index] != "complete"]
    if not pending:
        return status
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError) as exc:
                raise InputError(f"--scheduler {scheduler}: no answer within {timeout:g} s "
                                 f"({type(exc).__name__})") from None
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                   processes=True, dashboard_address=None)
            client = Client(cluster)
        with client:
            futures = {client.submit(execute_run, sweep, r, str(directory), pure=False,
                                     retries=retries, key=f"run-{sweep.fingerprint}-{r.name}"):
                       r for r in pending}
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(futures), unit="run", desc=sweep.name, leave=False)
            for future in as_completed(futures):
                run = futures[future]
                try:
                    _, seconds = future.result()
                    status[run.index] = "complete"
                    wall[run.index] = seconds
                except Exception:  # a failed run is recorded, not fatal to the sweep
                    status[run.index] = "failed"
                write_index(sweep, directory, status, wall)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
    finally:
        if cluster is not None:
            cluster.close()
    return status
