"""Model against circuit (``imcsim compare-circuit`` traces): error table and figure.

The trace holds the inputs, both models' and the circuit's spike times (units of the phase
length T from the start of the firing phase), the circuit waveforms, the one-cell
characterisation and, as attributes, the netlist, the parasitics and the characterised
scalars (JSON). See :mod:`imcsim.scenarios.circuit.compare` for the no-spike rule.
"""

from __future__ import annotations

import json

import numpy as np

from imcsim.store import Trace


def read_comparison(trace: Trace) -> dict:
    """The comparison as numpy arrays and dicts: spike times, waveforms, metrics,
    characterised scalars, parasitics, options."""
    g = trace.group
    a = trace.attrs
    out = {name: g[f"{grp}/{name}"][()] for grp, names in (
        ("inputs", ("t_in", "w_target", "bias_n", "bias_p")),
        ("model", ("w", "beta_bottom_up", "end_packet", "t_bottom_up", "t_top_down")),
        ("circuit", ("t_spike", "t_wave", "v_mem", "v_out"))) for name in names}
    out["metrics"] = {k: v for k, (v, _) in trace.metrics().items()}
    out["characterisation"] = json.loads(a["characterisation"])
    out["parasitics"] = json.loads(a["parasitics"])
    out["design"] = json.loads(a["design"])
    out["options"] = json.loads(a["scenario_resolved"])
    return out


def table_lines(metrics: dict, char: dict, options: dict) -> list[str]:
    """The characterised model parameters and the error table as text lines. ``metrics``:
    name -> value or (units, value)."""
    m = {k: (v[1] if isinstance(v, tuple) else v) for k, v in metrics.items()}
    ns = 1e9
    t_ns = 1e3  # one T = 1 µs = 1000 ns
    lines = [
        f"  circuit: {options.get('inputs')} inputs x {options.get('neurons')} neurons, "
        f"{options.get('trials')} trials, seed {options.get('seed')}",
        f"  characterised: V_0 {char['v0_v']:.4f} V, V_switch {char['v_switch_v']:.4f} V "
        f"(DC {char['v_switch_dc_v']:.4f} V), V_swing {char['v_swing_v']:.4f} V, "
        f"C {char['c_eff_f'] * 1e15:.1f} fF (MIM {char['c_mem_f'] * 1e15:.1f} fF)",
        f"  E+ {char['E_n_at_w0.05']:.3f} / {char['E_n_at_w0.1']:.3f} / "
        f"{char['E_n_at_w0.2']:.3f}, E- {char['E_p_at_w0.05']:.3f} / "
        f"{char['E_p_at_w0.1']:.3f} / {char['E_p_at_w0.2']:.3f} (at w = 0.05 / 0.1 / 0.2); "
        f"E_dis {char['E_dis']:.3f} at V_dis {char['v_dis_bias_v']:.4f} V",
        f"  linear fit I = g(V - V_E) over v in [-0.2, 1.05], worst deviation over w in "
        f"[0.01, 0.5]: nfet {100 * char['fit_max_rel_dev_n']:.2f} %, pfet "
        f"{100 * char['fit_max_rel_dev_p']:.2f} % of I(V_0) (near threshold, v > 0.8: "
        f"{100 * char['fit_max_rel_dev_near_threshold_n']:.2f} %, "
        f"{100 * char['fit_max_rel_dev_near_threshold_p']:.2f} %)",
        f"  switching packets at w = 0.1: nfet on {char['q_on_n_at_w0.1_c'] * 1e15:+.3f} fC, "
        f"off {char['q_off_n_at_w0.1_c'] * 1e15:+.3f} fC; pfet on "
        f"{char['q_on_p_at_w0.1_c'] * 1e15:+.3f} fC, off {char['q_off_p_at_w0.1_c'] * 1e15:+.3f}"
        f" fC (drawn from the membrane)",
        f"  {'model':<10}{'RMS (T)':>10}{'RMS (ns)':>10}{'max (ns)':>10}{'mean (ns)':>11}"
        f"{'fire disagree':>15}",
    ]
    for model in ("bottom_up", "top_down", "top_down_mid", "top_down_fit"):
        if f"rms_{model}" not in m:
            continue
        lines.append(f"  {model:<13}{m[f'rms_{model}']:>7.4f}{m[f'rms_{model}'] * t_ns:>10.2f}"
                     f"{m[f'max_abs_{model}'] * t_ns:>10.2f}{m[f'mean_{model}'] * t_ns:>11.2f}"
                     f"{int(m[f'disagree_{model}']):>15d}")
    if "rms_top_down_mid" in m:
        lines.append("  top_down: the ideal mapping (currents at the reset level, ideal "
                     "discharge); top_down_mid: currents and discharge at mid-swing from the "
                     "characterisation; top_down_fit: gains fitted to these circuit runs "
                     "(in-sample oracle)")
        lines.append(f"  bottom-up RMS / top_down_mid RMS: {m['rms_ratio_top_down_mid']:.3f}; "
                     f"/ top_down_fit RMS: {m['rms_ratio_top_down_fit']:.3f}")
    lines.append(f"  bottom-up / top-down RMS: {m['rms_ratio']:.3f}; circuit fired in "
                 f"{int(m['circuit_fired'])} of {int(m['pairs'])} (trial, neuron) pairs; "
                 f"{int(m['n_clipped'])} weights clipped")
    lines.append(f"  wall time: ngspice {m['ngspice_wall']:.2f} s, model "
                 f"{m['model_wall'] * ns / 1e3:.1f} µs, ratio {m['speed_ratio']:.3g}x "
                 f"(characterisation {m['characterise_wall']:.1f} s)")
    if "trained_n_test" in m:
        lines.append(f"  trained 16-10 digits network (DSTD), {int(m['trained_n_test'])} test "
                     f"digits through ngspice:")
        lines.append(f"  {'trained for':<12}{'model (full test)':>18}{'model':>8}"
                     f"{'circuit':>9}{'agree':>7}{'clipped':>9}")
        for model in ("bottom_up", "top_down", "top_down_mid"):
            if f"acc_model_full_{model}" not in m:
                continue
            lines.append(f"  {model:<12}{100 * m[f'acc_model_full_{model}']:>17.1f}%"
                         f"{100 * m[f'acc_model_{model}']:>7.1f}%"
                         f"{100 * m[f'acc_circuit_{model}']:>8.1f}%"
                         f"{100 * m[f'agreement_{model}']:>6.0f}%"
                         f"{int(m[f'n_clipped_{model}']):>9d}")
    return lines


def summary_lines(trace: Trace) -> list[str]:
    """The table of :func:`table_lines` read back from a trace."""
    d = read_comparison(trace)
    return table_lines(d["metrics"], d["characterisation"], d["options"])


def figure(trace: Trace, out) -> None:
    """Membrane waveforms of one trial (circuit against both models, the trial with the
    largest top-down error), and model-vs-circuit spike-time scatter for both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = read_comparison(trace)
    c, des = d["characterisation"], d["design"]
    t_c = np.minimum(d["t_spike"], 1.0)
    err_td = np.abs(np.minimum(d["t_top_down"], 1.0) - t_c).max(axis=1)
    trial = int(np.argmax(err_td))
    t_norm = np.linspace(0.0, 2.0, 401)
    t_us = (des["t_reset_s"] + t_norm * des["t_phase_s"]) * 1e6
    fig, (ax_v, ax_s) = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    models = _model_waveforms(d, trial, t_norm, c)
    for i in range(d["v_mem"].shape[1]):
        col = colors[i % len(colors)]
        ax_v.plot(d["t_wave"] * 1e6, d["v_mem"][trial, i], color=col, lw=1.5,
                  label="circuit" if i == 0 else None)
        ax_v.plot(t_us, models["bottom_up"][:, i], "--", color=col, lw=1,
                  label="bottom-up" if i == 0 else None)
        ax_v.plot(t_us, models["top_down"][:, i], ":", color=col, lw=1,
                  label="top-down" if i == 0 else None)
    ax_v.axhline(c["v_switch_v"], color="k", lw=0.6)
    for x in (des["t_reset_s"], des["t_reset_s"] + des["t_phase_s"]):
        ax_v.axvline(x * 1e6, color="grey", lw=0.6)
    ax_v.set(xlabel="time (µs)", ylabel="membrane node (V)",
             title=f"trial {trial}: circuit (solid) vs models")
    ax_v.legend(loc="lower left")
    m = d["metrics"]
    for name, marker in (("bottom_up", "o"), ("top_down", "x")):
        ax_s.plot(t_c.ravel(), np.minimum(d[f"t_{name}"], 1.0).ravel(), marker, ms=4,
                  label=f"{name.replace('_', '-')} (RMS {m[f'rms_{name}'] * 1e3:.1f} ns)")
    ax_s.plot([0, 1], [0, 1], "k-", lw=0.6)
    ax_s.set(xlabel="circuit spike time (T)", ylabel="model spike time (T)",
             title="output spike times (no spike: 1)", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    ax_s.legend(loc="upper left")
    fig.savefig(out)
    plt.close(fig)


def _model_waveforms(d: dict, trial: int, t_norm: np.ndarray, c: dict) -> dict:
    """Model membrane (V) of one trial on ``t_norm`` (accumulation + firing), both models;
    the bottom-up trajectory gets its end-of-input packets at the start of the firing phase."""
    from imcsim.physics import spiking

    t_in, w = d["t_in"][trial], d["w"][trial]
    out = {}
    for name, beta, beta_fire in (("bottom_up", d["beta_bottom_up"][trial], c["beta_fire"]),
                                  ("top_down", np.zeros_like(w), 0.0)):
        v = spiking.membrane_potential(t_in, w, beta, t_norm[t_norm < 1.0])
        if name == "bottom_up":
            jump = (t_in < 1.0).astype(float) @ d["end_packet"][trial]
        else:
            jump = np.zeros(w.shape[1])
        _, v_end = spiking.layer_spike_times(t_in[None], w, beta, return_v_end=True)
        v1 = v_end[0] + jump
        s = t_norm[t_norm >= 1.0] - 1.0
        if beta_fire > 0:
            fire = 1.0 / beta_fire + (v1 - 1.0 / beta_fire) * np.exp(-beta_fire * s[:, None])
        else:
            fire = v1 + s[:, None]
        out[name] = c["v0_v"] - np.vstack([v, fire]) * c["v_swing_v"]
    return out
