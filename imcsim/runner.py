"""Run one scenario file into one trace file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numba

from imcsim.config import LoadedScenario, load_scenario, to_dict
from imcsim.engine import build_timeline, run_events
from imcsim.errors import InputError
from imcsim.scenarios.pcm_array import PCMArraySimulation
from imcsim.store import TraceWriter


def default_scenario_path() -> Path:
    """The packaged ``pcm_drift.toml`` (installed with imcsim.scenarios)."""
    from importlib.resources import files

    return Path(str(files("imcsim.scenarios") / "pcm_drift.toml"))


def check_output_path(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise InputError(f"{out}: is a directory, expected a .h5 file name")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: file exists (pass --overwrite to replace it)")
    if not out.parent.exists():
        raise InputError(f"{out}: directory {out.parent} does not exist")


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise InputError(f"--threads: must be between 1 and {numba.config.NUMBA_NUM_THREADS}, "
                         f"got {threads}")
    numba.set_num_threads(threads)


def run_scenario(scenario: str | os.PathLike | LoadedScenario, out: str | os.PathLike, *,
                 seed: int | None = None, threads: int | None = None, progress: bool = False,
                 overwrite: bool = False) -> Path:
    """Validate, simulate and write ``out``; bad input raises InputError before any write."""
    loaded = scenario if isinstance(scenario, LoadedScenario) else load_scenario(scenario, seed)
    out = Path(out)
    check_output_path(out, overwrite)
    set_threads(threads)
    sc = loaded.scenario
    seed = sc.run.seed
    events = build_timeline(sc, sc.device.pulse_model().t_pulse)
    try:
        sim = PCMArraySimulation(loaded, seed, events)
    except InputError as exc:
        raise InputError(f"{loaded.path or '<scenario>'}: {exc}") from None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(events), unit="event", desc=sc.run.name, leave=False)
    try:
        with TraceWriter(out, overwrite=overwrite) as writer:
            writer.set_attrs(scenario_toml=loaded.text,
                             scenario_resolved=json.dumps(to_dict(sc)),
                             scenario_path=str(loaded.path or ""), scenario_kind="pcm_array",
                             run_name=sc.run.name, seed=seed, n_events=len(events))
            sim.declare(writer)
            writer.begin()
            run_events(sim, events, bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return out
