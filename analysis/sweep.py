"""Sweeps as labelled arrays: every scalar metric of every run, over the sweep's axes."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np


def _label(path: str) -> str:
    return path.replace("[", "_").replace("]", "").replace(".", "__")


def open_sweep(directory: str | Path):
    """An ``xarray.Dataset`` of a sweep folder: one variable per scalar metric the runs
    recorded (units in its attributes), dimensions = the axes (named after their parameter
    paths, '.' -> '__') and ``repeat``; zipped axes share one dimension ``point``. Runs that
    are not complete give NaN."""
    import xarray as xr

    directory = Path(directory)
    with h5py.File(directory / "sweep.h5", "r") as f:
        paths = json.loads(f.attrs["axes"])
        repeats = int(f.attrs["repeats"])
        mode = str(f.attrs["mode"])
        table = f["table"]
        axis_values = [table[f"axis{k}"][:] for k in range(len(paths))]
        repeat = table["repeat"][:]
        files = [directory / name.decode() for name in table["file"][:]]
    names = [_label(p) for p in paths]
    if mode == "zip":
        points = list(dict.fromkeys(zip(*axis_values)))
        dims, shape = ["point", "repeat"], (len(points), repeats)
        coords = {name: ("point", [p[k] for p in points]) for k, name in enumerate(names)}
        position = [(points.index(tuple(v[i] for v in axis_values)), repeat[i])
                    for i in range(len(files))]
    else:
        uniques = [list(dict.fromkeys(v.tolist())) for v in axis_values]
        dims, shape = [*names, "repeat"], (*(len(u) for u in uniques), repeats)
        coords = {name: u for name, u in zip(names, uniques)}
        position = [(*(uniques[k].index(axis_values[k][i].item()) for k in range(len(names))),
                     repeat[i]) for i in range(len(files))]
    coords["repeat"] = np.arange(repeats)
    data: dict[str, np.ndarray] = {}
    attrs: dict[str, dict] = {}
    for pos, path in zip(position, files):
        if not path.exists():
            continue
        with h5py.File(path, "r") as run:
            if "metrics" not in run:
                continue
            for name, d in run["metrics"].items():
                if name not in data:
                    data[name] = np.full(shape, np.nan)
                    attrs[name] = {"units": str(d.attrs.get("units", "")),
                                   "description": str(d.attrs.get("description", ""))}
                data[name][pos] = float(d[()])
    ds = xr.Dataset({name: (dims, values, attrs[name]) for name, values in data.items()},
                    coords=coords)
    for name, path in zip(names, paths):
        ds[name].attrs["parameter_path"] = path
    return ds


def sweep_figure(directory: str | Path, out: str | Path) -> Path:
    """Each metric against the first axis: mean ± std over repeats, one line per value of
    the second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = open_sweep(directory)
    axes_dims = [d for d in ds.dims if d != "repeat"]
    first = axes_dims[0]
    second = axes_dims[1] if len(axes_dims) > 1 else None
    metrics = list(ds.data_vars)
    cols = min(3, len(metrics)) or 1
    rows = (len(metrics) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, name in zip(grid.flat, metrics):
        var = ds[name]
        groups = [None] if second is None else list(ds[second].values)
        for value in groups:
            sel = var if value is None else var.sel({second: value})
            extra = [d for d in sel.dims if d not in (first, "repeat")]
            if extra:
                sel = sel.isel({d: 0 for d in extra})
            mean = sel.mean("repeat").values
            std = sel.std("repeat").values
            x = ds[first].values
            label = None if value is None else f"{second} = {value:g}"
            ax.plot(x, mean, "o-", label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel(ds[first].attrs.get("parameter_path", first))
        ax.set_ylabel(f"{name} [{var.attrs.get('units', '')}]")
        if second is not None:
            ax.legend(fontsize=7)
    for ax in list(grid.flat)[len(metrics):]:
        ax.set_visible(False)
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
