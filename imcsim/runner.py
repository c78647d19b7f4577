"""Run one scenario file into one trace file."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numba

from imcsim.config import LoadedScenario, load_scenario, to_dict
from imcsim.engine import build_timeline
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


# The run class of each study table: module and class, imported only when used.
STUDY_RUNS = {
    "network": ("imcsim.scenarios.network", "NetworkRun"),
    "training": ("imcsim.scenarios.mixed_precision", "TrainingRun"),
    "spiking": ("imcsim.scenarios.spiking", "SpikingRun"),
    "inference": ("imcsim.scenarios.inference", "InferenceRun"),
}


def study_run_class(kind: str):
    """The class that runs a scenario of ``kind``: built from (loaded scenario, seed), with
    ``n_steps``, ``declare(run_writer)`` and ``run(progress)``."""
    module, name = STUDY_RUNS[kind]
    return getattr(importlib.import_module(module), name)


def run_scenario(scenario: str | os.PathLike | LoadedScenario, out: str | os.PathLike, *,
                 seed: int | None = None, threads: int | None = None, progress: bool = False,
                 overwrite: bool = False) -> Path:
    """Validate, simulate and write ``out``; bad input raises InputError before any write.

    A plain scenario writes a single-run trace; a study (``[[variant]]`` / ``[study]``) writes
    every run into ``/runs/<name>`` of one file, one after another, each marked pending,
    running, complete or failed.
    """
    loaded = scenario if isinstance(scenario, LoadedScenario) else load_scenario(scenario, seed)
    out = Path(out)
    check_output_path(out, overwrite)
    set_threads(threads)
    study = bool(loaded.variants)
    plans = []
    for name, overrides, sc in loaded.runs():
        one = LoadedScenario(sc, loaded.text, loaded.path)
        try:
            if sc.kind == "pcm_array":
                sim = PCMArraySimulation(one, sc.run.seed,
                                         build_timeline(sc, sc.device.pulse_model().t_pulse))
            else:
                sim = study_run_class(sc.kind)(one, sc.run.seed)
        except InputError as exc:
            where = f"{name}: " if study else ""
            raise InputError(f"{loaded.path or '<scenario>'}: {where}{exc}") from None
        plans.append((name, overrides, sc, sim))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(p[3].n_steps for p in plans), unit="step",
                   desc=loaded.scenario.run.name, leave=False)
    try:
        with TraceWriter(out, overwrite=overwrite, single_run=not study) as writer:
            writer.set_attrs(scenario_toml=loaded.text, scenario_path=str(loaded.path or ""),
                             trace_kind="study" if study else "run",
                             run_name=loaded.scenario.run.name, seed=loaded.scenario.run.seed)
            if study:
                writer.set_attrs(run_order=[p[0] for p in plans])
            run_writers = []
            for name, overrides, sc, sim in plans:
                rw = writer.add_run(name) if study else writer.root
                rw.set_attrs(scenario_resolved=json.dumps(to_dict(sc)),
                             scenario_kind=sc.kind,
                             run_name=name, seed=sc.run.seed, n_steps=sim.n_steps,
                             overrides=json.dumps(overrides))
                sim.declare(rw)
                run_writers.append(rw)
            writer.begin()
            for (_, _, _, sim), rw in zip(plans, run_writers):
                if study:
                    rw.set_status("running")
                try:
                    sim.run(bar.update if bar is not None else None)
                except BaseException as exc:
                    if study:
                        rw.set_status("failed", f"{type(exc).__name__}: {exc}")
                    raise
                if study:
                    rw.set_status("complete")
                writer.flush()
    finally:
        if bar is not None:
            bar.close()
    return out
