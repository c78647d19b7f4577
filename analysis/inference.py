"""Inference-robustness study results: the table method × drift time → accuracy and its
figure (scenarios.inference)."""

from __future__ import annotations

import json

import numpy as np

from imcsim.store import Trace

_DAY = 86400.0


def _names(trace: Trace, key: str) -> list[str]:
    return [str(v) for v in trace.attrs[key]]


def accuracy_table(trace: Trace) -> list[dict]:
    """One row per (architecture, method): drift times (s), mean and sample std of the test
    accuracy over device seeds at each time, the seeds, and what the method needs to know."""
    needs = json.loads(str(trace.attrs["inference_needs"]))
    seeds = [int(s) for s in trace.attrs["inference_device_seeds"]]
    rows = []
    for arch in _names(trace, "inference_architectures"):
        for method in _names(trace, "inference_methods"):
            s = trace.series(f"accuracy_{arch}_{method}")
            std = s.data.std(axis=1, ddof=1) if s.data.shape[1] > 1 else np.full(s.t.size,
                                                                                   np.nan)
            rows.append({"architecture": arch, "method": method, "t": s.t,
                         "mean": s.data.mean(axis=1), "std": std, "seeds": seeds,
                         "needs": needs[method]})
    return rows


def _time_label(t: float) -> str:
    for unit, size in (("y", 3.1536e7), ("d", _DAY), ("h", 3600.0), ("min", 60.0)):
        if t >= size:
            return f"{t / size:g} {unit}"
    return f"{t:g} s"


def _characterisation_prefix(trace: Trace, arch: str) -> str | None:
    """Series-name prefix of ``arch``'s programming characterisation ("characterisation_"
    in traces with one for the whole study), None without one."""
    names = trace.series_names()
    for prefix in (f"characterisation_{arch}_", "characterisation_"):
        if f"{prefix}sigma" in names:
            return prefix
    return None


def _characterisation_us(trace: Trace, prefix: str) -> dict:
    """The programming characterisation's per-level σ, its standard error, the mean error,
    the refitted and preset σ, and (traces that hold them) the mean of the target-0 device,
    the model's, and the fitted common mode C, in µS (NaN: a level not measured)."""
    names = trace.series_names()
    return {what: trace.series(f"{prefix}{what}").data[-1] * 1e6
            for what in ("sigma", "sigma_se", "bias", "sigma_fitted", "sigma_preset", "low",
                         "low_fitted", "common_mode_levels")
            if f"{prefix}{what}" in names}


def characterisation_lines(trace: Trace) -> list[str]:
    """What the programming characterisation measured and the noise model refitted to it
    (``[inference] noise_model = "characterised"``), per architecture, a row every fourth
    measured level; [] without."""
    lines = []
    for arch in _names(trace, "inference_architectures"):
        prefix = _characterisation_prefix(trace, arch)
        if prefix is None or (prefix == "characterisation_" and lines):
            continue
        levels = trace.series(f"{prefix}levels").data[-1]
        got = _characterisation_us(trace, prefix)
        chi2 = trace.metrics()[f"{prefix}chi2_dof"][0]
        coeff = [float(c) * 1e6 for c in trace.attrs[f"{prefix}prog_coeff"]]
        common = [float(c) * 1e6 for c in trace.attrs.get(f"{prefix}common_mode", [])]
        low = "low" in got
        where = ("copies of its SGD network's mapping" if prefix != "characterisation_"
                 else "a tile of its own")
        lines += [f"  {arch if prefix != 'characterisation_' else 'all'}: programming "
                  f"characterised on {where}, devices of their own; the noise-aware methods "
                  "assume the refitted model",
                  f"    sigma_prog(g) = max(P(g/g_max), 0), P of degree {len(coeff) - 1}, "
                  f"chi^2/dof {chi2:.2f}"]
        if low:
            lines.append("    common mode C(|u|) on both devices of a pair: "
                         + (f"polynomial of degree {len(common) - 1}, C(0) = {common[0]:.2f} µS"
                            if common else "none (the target-0 device sits at its own noise)"))
        lines.append(f"    {'|u|':>6}{'measured σ (µS)':>20}{'fitted':>9}{'preset':>9}"
                     f"{'bias (µS)':>11}" + (f"{'G at 0 (µS)':>13}{'model':>8}" if low else ""))
        measured = np.flatnonzero(np.isfinite(got["sigma"]))
        for k in measured[::4]:
            row = (f"    {levels[k]:>6.3f}{got['sigma'][k]:>12.3f} ± {got['sigma_se'][k]:.3f}"
                   f"{got['sigma_fitted'][k]:>9.3f}{got['sigma_preset'][k]:>9.3f}"
                   f"{got['bias'][k]:>+11.3f}")
            if low:
                row += f"{got['low'][k]:>13.3f}{got['low_fitted'][k]:>8.3f}"
            lines.append(row)
    return lines


def summary_lines(trace: Trace) -> list[str]:
    """The lines ``imcsim info`` prints: per architecture, the table method × drift time →
    accuracy (%) mean ± std over device seeds, PTO's recovery, and the needs-to-know list."""
    rows = accuracy_table(trace)
    if not rows:
        return ["  no results"]
    metrics = trace.metrics()
    lines = [f"  test accuracy (%), mean ± std over device seeds {rows[0]['seeds']}, with "
             "global drift compensation"]
    resolved = json.loads(str(trace.attrs.get("scenario_resolved", "{}")))
    device = resolved.get("device", {}).get("model")
    programming = str(trace.attrs.get("inference_programming", "statistical"))
    if device:
        how = {"verify": "programmed pulse by pulse (program-and-verify)",
               "gdp": "programmed pulse by pulse (gradient-descent programming)"}.get(
            programming, "programmed to its statistical programming noise")
        lines.insert(0, f"  PCM device model: {device}, {how}")
    lines.extend(characterisation_lines(trace))
    for arch in _names(trace, "inference_architectures"):
        mine = [r for r in rows if r["architecture"] == arch]
        times = mine[0]["t"]
        lines.append(f"  {arch}:")
        lines.append(f"    {'method':<20}" + "".join(f"{_time_label(t):>16}" for t in times))
        for r in mine:
            cells = "".join(f"{100 * m:>9.2f} ± {100 * s:4.2f}" for m, s in zip(r["mean"],
                                                                                 r["std"]))
            lines.append(f"    {r['method']:<20}{cells}")
        lines.append("    weight error |W_eff − W|/|W| (%) of the tiles as read, mean over seeds:")
        for r in mine:
            name = f"weight_error_{arch}_{r['method']}"
            if name in trace.series_names():
                err = trace.series(name).data.mean(axis=1)
                lines.append(f"    {r['method']:<20}" + "".join(f"{100 * e:>16.2f}"
                                                             for e in err))
        columns = {"pulses": ("pulses per device", 1.0, ".2f"),
                   "converged": ("% pairs within tolerance", 100.0, ".2f"),
                   "mvm_error": ("% MVM error (GDP's last)", 100.0, ".2f"),
                   "conductance": ("G programmed/target", 1.0, ".3f")}
        programmed = [(r["method"], {what: trace.series(f"programming_{what}_{arch}_"
                                                        f"{r['method']}").data
                                     for what in columns
                                     if f"programming_{what}_{arch}_{r['method']}"
                                     in trace.series_names()})
                      for r in mine]
        programmed = [(method, rec) for method, rec in programmed if rec]
        if programmed:
            shown = list(programmed[0][1])
            lines.append(f"    {programming} programming, mean over seeds:")
            lines.append(f"    {'':<20}" + "".join(f"{columns[what][0]:>27}" for what in shown))
            for method, rec in programmed:
                lines.append(f"    {method:<20}" + "".join(
                    f"{columns[what][1] * np.mean(rec[what]):>27{columns[what][2]}}"
                    for what in shown))
        by_method = {r["method"]: r for r in mine}
        accuracies = {r["method"]: trace.series(f"accuracy_{arch}_{r['method']}").data
                      for r in mine}
        comparison = _comparison_lines(accuracies, times)
        lines.extend(comparison[0])
        for method in by_method:
            key = f"pto_{arch}_{method}_holdout_start"
            if key in metrics and np.isfinite(metrics[key][0]):
                start, best = metrics[key][0], metrics[f"pto_{arch}_{method}_holdout_best"][0]
                sem = metrics[f"pto_{arch}_{method}_holdout_sem"][0]
                spread = metrics[f"pto_{arch}_{method}_start_spread"][0]
                lines.append(f"    {method}: objective on hold-out draws {start:.4f} -> "
                             f"{best:.4f} ({best - start:+.4f} ± {sem:.4f} paired s.e.; one "
                             f"draw scatters by {spread:.4f})")
        key = f"mse_clip_weight_error_ratio_{arch}"
        if key in metrics:
            lines.append(f"    MSE-optimal column clipping: rms weight error x "
                         f"{metrics[key][0]:.3f} of max-abs (device model at t_train)")
        lines.extend(comparison[1])
    lines.append("  needs to know:")
    for r in rows[:len(_names(trace, "inference_methods"))]:
        lines.append(f"    {r['method']:<20}{r['needs']}")
    return lines


def _pooled_accuracies(path, names: list[str]):
    """(architectures, methods, times, {arch: {method: (times, chips)}}, training seeds,
    device seeds) of the inference runs ``names`` of a study file, chips ordered run by run;
    None unless there are at least two, all complete, whose scenarios differ in nothing but
    ``inference.train_seed`` (a study of hardware or method variants is not pooled)."""
    runs = []
    for name in names:
        with Trace(path, run=name) as tr:
            if tr.status != "complete" or tr.attrs.get("scenario_kind") != "inference":
                return None
            resolved = json.loads(str(tr.attrs.get("scenario_resolved", "{}")))
            train_seed = resolved.get("inference", {}).pop("train_seed", None)
            key = (tuple(_names(tr, "inference_architectures")),
                   tuple(_names(tr, "inference_methods")),
                   tuple(float(t) for t in tr.attrs["inference_times"]),
                   tuple(int(d) for d in tr.attrs["inference_device_seeds"]),
                   json.dumps(resolved, sort_keys=True))
            series = {(a, m): tr.series(f"accuracy_{a}_{m}").data
                      for a in key[0] for m in key[1]}
            runs.append((key, train_seed, series))
    if len(runs) < 2 or len({r[0] for r in runs}) > 1 or len({r[1] for r in runs}) < len(runs):
        return None
    archs, methods, times, seeds, _ = runs[0][0]
    acc = {a: {m: np.concatenate([r[2][(a, m)] for r in runs], axis=1) for m in methods}
           for a in archs}
    return archs, list(methods), times, acc, [r[1] for r in runs], seeds


def pooled_summary_lines(path, names: list[str]) -> list[str]:
    """For a study file whose runs are inference studies of the same methods, times and
    device seeds that differ in their training seed (e.g. scenarios/
    inference_training_seeds.toml): the accuracy table and the comparisons pooled over all
    chips (training seed × device seed), with two-stage bootstrap standard errors and
    intervals (training seeds, then device seeds within them), so that a method's gain is
    judged against the scatter between trained networks as well as between chips. Empty if
    the runs are not such a study."""
    data = _pooled_accuracies(path, names)
    if data is None:
        return []
    archs, methods, times, acc, train_seeds, seeds = data
    groups = np.repeat(np.arange(len(train_seeds)), len(seeds))
    lines = [f"  pooled over {len(train_seeds)} runs (training seeds {train_seeds}) × device "
             f"seeds {list(seeds)}: {groups.size} chips; standard errors and intervals by a "
             "two-stage bootstrap (training seeds, then device seeds)"]
    for arch in archs:
        lines.append(f"  {arch}: test accuracy (%), mean ± std over chips")
        lines.append(f"    {'method':<20}" + "".join(f"{_time_label(t):>16}" for t in times))
        for m in methods:
            values = acc[arch][m]
            lines.append(f"    {m:<20}" + "".join(
                f"{100 * a:>9.2f} ± {100 * e:4.2f}"
                for a, e in zip(values.mean(axis=1), values.std(axis=1, ddof=1))))
        paired, shares = _comparison_lines(acc[arch], times, groups)
        lines.extend(paired + shares)
    return lines


def _time_header(times) -> str:
    return (f"    {'':<20}" + "".join(f"{_time_label(t):>20}   " for t in times)).rstrip()


def _comparison_lines(accuracies: dict, times, groups=None) -> tuple[list[str], list[str]]:
    """Two blocks of lines from per-chip accuracies ``{method: (times, chips)}`` (chip k of
    every method on the same devices): the paired difference of each method to sgd_maxabs
    (mean ± std over chips, standard error of the mean), and the share of the float −
    sgd_maxabs loss each method wins back with its 95 % paired bootstrap interval
    (``scenarios.inference.recovery_interval``). ``groups``: the training seed of each chip's
    networks, for a two-stage bootstrap (standard errors and intervals) when the chips carry
    networks trained from several seeds. Empty blocks without an sgd_maxabs baseline."""
    from imcsim.scenarios.inference import bootstrap_picks, recovery, recovery_interval

    if "sgd_maxabs" not in accuracies:
        return [], []
    base = accuracies["sgd_maxabs"]
    n = base.shape[1]
    picks = bootstrap_picks(n, groups, resamples=4000) if groups is not None else None

    def sem(values):  # standard error of the mean over chips, (times,)
        if n < 2:
            return np.zeros(values.shape[0])
        if picks is None:
            return values.std(axis=1, ddof=1) / np.sqrt(n)
        return values[:, picks].mean(axis=2).std(axis=1, ddof=1)

    unit = "chips (training × device seeds)" if groups is not None else "seeds"
    paired = ["    paired difference to sgd_maxabs on the same chips (points), mean ± std over "
              f"{unit} (standard error of the mean)", _time_header(times)]
    others = [m for m in accuracies if m not in ("float", "sgd_maxabs")]
    for method in others:
        diff = 100 * (accuracies[method] - base)
        spread = diff.std(axis=1, ddof=1) if n > 1 else 0 * diff[:, 0]
        paired.append(f"    {method:<20}" + "".join(
            f"{m:>+9.2f} ± {s:4.2f} ({e:4.2f})"
            for m, s, e in zip(diff.mean(axis=1), spread, sem(diff))))
    if not others:
        paired = []
    if "float" not in accuracies:
        return paired, []
    flt = accuracies["float"]
    title = (f"    share of the float − sgd_maxabs loss won back, % [95 % paired bootstrap "
             f"interval over {unit}]" if others else
             f"    float − sgd_maxabs loss (points, ± standard error over {unit})")
    shares = [title, _time_header(times),
              f"    {'loss (points)':<20}" + "".join(
                  f"{100 * lost:>13.2f} ± {100 * e:4.2f}   " for lost, e in
                  zip((flt - base).mean(axis=1), sem(flt - base))).rstrip()]
    for method in others:
        cells = []
        for k in range(len(times)):
            share = recovery(flt[k], base[k], accuracies[method][k])
            if not np.isfinite(share):
                cells.append(f"{'no loss':>20}   ")
                continue
            low, high = recovery_interval(flt[k], base[k], accuracies[method][k],
                                          groups=groups)
            cells.append(f"{100 * share:>8.0f} [{100 * low:4.0f}, {100 * high:4.0f}]   ")
        shares.append((f"    {method:<20}" + "".join(cells)).rstrip())
    if others:
        shares.append("    (no loss: the loss is below 2 standard errors of the baseline's "
                      "mean)")
    return paired, shares


def run_comparison_lines(path, run_a: str, run_b: str) -> list[str]:
    """Method by method, the paired difference of two inference runs of one study file,
    B − A (points), chip by chip: device seed k of one run against device seed k of the
    other (common random numbers: the same devices, drawn by the same seeds, under the two
    runs' settings), mean ± std over seeds, standard error, and the 95 % bootstrap interval
    of the mean (10,000 resamples of the seeds). For variants of one study — a setting of the
    method, of the programming or of the hardware. The runs must be complete inference runs
    with the same architectures, drift times and device seeds; methods in only one of them
    are left out. Raises InputError (naming the run) otherwise."""
    from imcsim.errors import InputError
    from imcsim.scenarios.inference import bootstrap_picks

    keys, accuracies = [], []
    for name in (run_a, run_b):
        with Trace(path, run=name) as tr:
            if tr.attrs.get("scenario_kind") != "inference" or tr.status != "complete":
                raise InputError(f"{path}: run {name!r} is not a complete inference study")
            keys.append((tuple(_names(tr, "inference_architectures")),
                         tuple(float(t) for t in tr.attrs["inference_times"]),
                         tuple(int(d) for d in tr.attrs["inference_device_seeds"])))
            accuracies.append({(a, m): tr.series(f"accuracy_{a}_{m}").data
                               for a in keys[-1][0]
                               for m in _names(tr, "inference_methods")})
    if keys[0] != keys[1]:
        raise InputError(f"{path}: runs {run_a!r} and {run_b!r} differ in architectures, "
                         "drift times or device seeds; they cannot be paired chip by chip")
    archs, times, seeds = keys[0]
    picks = bootstrap_picks(len(seeds))
    lines = [f"  {run_b} − {run_a}: test accuracy (points), paired by device seed "
             f"{list(seeds)}; mean ± std (standard error) [95 % bootstrap interval]"]
    for arch in archs:
        lines.append(f"  {arch}:")
        lines.append((f"    {'method':<20}" + "".join(f"{_time_label(t):>32}   "
                                                      for t in times)).rstrip())
        same = []
        for (a, method), acc_a in accuracies[0].items():
            if a != arch or (a, method) not in accuracies[1]:
                continue
            diff = 100.0 * (accuracies[1][(a, method)] - acc_a)
            if not np.any(diff):
                same.append(method)
                continue
            n = diff.shape[1]
            spread = diff.std(axis=1, ddof=1) if n > 1 else np.zeros(len(times))
            means = diff[:, picks].mean(axis=2)
            low, high = np.percentile(means, [2.5, 97.5], axis=1)
            lines.append(f"    {method:<20}" + "".join(
                f"{m:>+8.2f} ± {sd:4.2f} ({sd / np.sqrt(n):4.2f}) [{lo:+5.2f}, {hi:+5.2f}]"
                for m, sd, lo, hi in zip(diff.mean(axis=1), spread, low, high)))
        if same:
            lines.append(f"    identical in both runs, chip by chip: {', '.join(same)}")
    return lines


def _normalised_weights(trace: Trace, arch: str, training: str):
    """(|w|/s, s) of every weight of a trained network (s its column's max |w|, the max-abs
    scale), flattened as the weight_sigma_* series."""
    names = trace.series_names()
    ratios, scales, k = [], [], 0
    while f"trained_{arch}_{training}_w{k}" in names:
        w = trace.series(f"trained_{arch}_{training}_w{k}").data[-1]
        s = np.max(np.abs(w), axis=0)
        s = np.broadcast_to(np.where(s > 0, s, 1.0), w.shape)
        ratios.append((np.abs(w) / s).ravel())
        scales.append(s.ravel())
        k += 1
    return np.concatenate(ratios), np.concatenate(scales)


def _noise_panel(ax, trace: Trace, arch: str) -> bool:
    """Device noise against the weight distribution: histograms of |w|/s of the trained
    networks, and σ_i/s (the noise model at t_train in units of the column range) of each
    weight under the mappings the study ran. False if the trace has nothing to show."""
    from imcsim.scenarios.inference import TRAINING_OF

    names = trace.series_names()
    methods = [m for m in _names(trace, "inference_methods")
               if f"weight_sigma_{arch}_{m}" in names]
    trainings = [t for t in _names(trace, "inference_trainings")
                 if f"trained_{arch}_{t}_w0" in names]
    if not methods or not trainings:
        return False
    bins = np.linspace(0.0, 1.0, 41)
    for training in trainings:
        u, _ = _normalised_weights(trace, arch, training)
        ax.hist(u, bins=bins, density=True, histtype="step", label=f"|w|/s, {training}")
    ax.set_xlabel("|w| / s  (s: the column's max |w|, mapped to g_max)")
    ax.set_ylabel("density of weights")
    right = ax.twinx()
    t_train = 0.0
    # one curve per mapping (the trainings share them; their |w|/s histograms differ), AFP
    # first so that fixed-point stays visible where the two coincide (|w|/s > 1/γ)
    colours = {"afp": "tab:purple", "sgd_fixed2": "0.55", "sgd_maxabs": "black"}
    for method in (m for m in colours if m in methods):
        series = trace.series(f"weight_sigma_{arch}_{method}")
        t_train = float(series.t[-1])
        u, scale = _normalised_weights(trace, arch, TRAINING_OF[method])
        sigma = series.data[-1] / scale
        order = np.argsort(u)
        right.plot(u[order], sigma[order], ".", ms=1.5, alpha=0.6, color=colours[method],
                   label=f"σ/s, {method}")
    right.plot(bins, bins, ":", color="0.5", lw=0.8, label="σ = |w| (noise as large as w)")
    right.set_ylim(0.0, 0.2)
    right.set_ylabel(f"σ_i / s at {_time_label(t_train)} (device model)")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper center",
              markerscale=4)
    ax.set_title(f"{arch}: device noise against the weight distribution")
    return True


def _accuracy_panel(ax, rows: list[dict], title: str) -> None:
    """Accuracy vs drift time (log axis), one line per method with its ±std band."""
    for r in rows:
        style = "--" if r["method"] == "float" else "o-"
        line, = ax.plot(r["t"], 100 * r["mean"], style, label=r["method"])
        std = np.nan_to_num(r["std"])
        ax.fill_between(r["t"], 100 * (r["mean"] - std), 100 * (r["mean"] + std),
                        color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)


def pooled_figure(path, names: list[str], out) -> bool:
    """Accuracy vs drift time pooled over the runs of a study file of inference runs (as
    :func:`pooled_summary_lines`): mean ± std over all chips (training seed × device seed),
    one panel per architecture. False if the runs cannot be pooled."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = _pooled_accuracies(path, names)
    if data is None:
        return False
    archs, methods, times, acc, train_seeds, _ = data
    n_runs = len(train_seeds)
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.8),
                             constrained_layout=True, squeeze=False)
    for ax, arch in zip(axes[0], archs):
        rows = [{"method": m, "t": np.asarray(times), "mean": acc[arch][m].mean(axis=1),
                 "std": acc[arch][m].std(axis=1, ddof=1)} for m in methods]
        chips = acc[arch][methods[0]].shape[1]
        _accuracy_panel(ax, rows, f"{arch}: mean ± std over {chips} chips ({n_runs} "
                                  "trainings × device seeds)")
    fig.suptitle(f"{Path(path).name}: inference under PCM drift, runs pooled")
    fig.savefig(Path(out), dpi=110)
    plt.close(fig)
    return True


def _characterisation_panel(ax, trace: Trace, prefix: str, arch: str) -> None:
    """Programming characterisation: measured σ of the weight error per target level (±2
    standard errors), the refitted model the noise-aware methods assume, the preset's fit,
    and the measured mean error."""
    u = trace.series(f"{prefix}levels").data[-1]
    got = _characterisation_us(trace, prefix)
    chi2 = trace.metrics()[f"{prefix}chi2_dof"][0]
    ax.errorbar(u, got["sigma"], yerr=2.0 * got["sigma_se"], fmt="o", ms=3, color="black",
                label="measured σ (± 2 s.e.)")
    ax.plot(u, got["sigma_fitted"], "-", color="tab:blue",
            label=f"refitted model (χ²/dof {chi2:.1f}), what the methods assume")
    ax.plot(u, got["sigma_preset"], "--", color="tab:red", label="device preset's fit")
    ax.plot(u, got["bias"], ":", color="0.4", label="measured mean error")
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set_xlabel("target |u| = |G⁺ − G⁻| / g_max")
    ax.set_ylabel("programmed weight error, G⁺ − G⁻ − u·g_max (µS)")
    ax.set_title(f"{arch + ': ' if prefix != 'characterisation_' else ''}programming "
                 f"characterisation ({trace.attrs.get('inference_programming', 'statistical')})")
    handles, labels = ax.get_legend_handles_labels()
    if "low" in got:
        right = ax.twinx()
        right.plot(u, got["low"], "s", ms=2.5, color="tab:green",
                   label="measured mean of the target-0 device (right)")
        right.plot(u, got["low_fitted"], "-", color="tab:green", lw=0.8,
                   label="model with the fitted common mode (right)")
        right.set_ylabel("target-0 device of a pair (µS)", color="tab:green")
        right.set_ylim(bottom=0.0)
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, fontsize=7)


def figure(trace: Trace, out) -> None:
    """Top row: accuracy vs drift time (log axis), one line per method with its ±std band
    over device seeds, one panel per architecture. Bottom row, where the trace holds the
    trained weights: σ_i of the device model against the distribution of |w|/s, which is why
    a method does or does not help. Third row, under noise_model = "characterised": the
    programming characterisation and the refitted noise model."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = accuracy_table(trace)
    archs = _names(trace, "inference_architectures")
    prefixes = [_characterisation_prefix(trace, arch) for arch in archs]
    characterised = any(p is not None for p in prefixes)
    n_rows = 3 if characterised else 2
    fig, axes = plt.subplots(n_rows, len(archs), figsize=(6.5 * len(archs), 4.5 * n_rows),
                             constrained_layout=True, squeeze=False)
    if characterised:
        for ax, arch, prefix in zip(axes[2], archs, prefixes):
            if prefix is None or (prefix == "characterisation_" and ax is not axes[2][0]):
                ax.set_axis_off()
            else:
                _characterisation_panel(ax, trace, prefix, arch)
    for ax, arch in zip(axes[0], archs):
        _accuracy_panel(ax, [r for r in rows if r["architecture"] == arch],
                        f"{arch}: mean ± std over {len(rows[0]['seeds'])} device seeds")
    for ax, arch in zip(axes[1], archs):
        if not _noise_panel(ax, trace, arch):
            ax.set_axis_off()
    name = Path(trace.path).name + (f" [{trace.run}]" if trace.run else "")
    programming = str(trace.attrs.get("inference_programming", "statistical"))
    fig.suptitle(f"{name}: inference under PCM drift, {programming} programming"
                 + (" (σ_i below: programming noise refitted to the chip's programming)"
                    if characterised else "" if programming == "statistical" else
                    " (σ_i below: the statistical model's, as the methods assume)"))
    fig.savefig(Path(out), dpi=110)
    plt.close(fig)
