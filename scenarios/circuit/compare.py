"""Model against circuit: the same weights and input spikes through the bottom-up model, the
top-down model and an ngspice transient of the sky130 core (Sakemi et al., arXiv 2412.09010
v1, Fig. 7: spike-time error of the output layer, ideal mapping against the physical model).

Weights -> circuit. A normalised weight w asks for the current I_0 = |w|·C·V_swing/T at the
post-reset level V_0 (the ideal mapping of the paper's Table 2, I = C_m·V_th·w/T); the gate
bias is read off the characterised I_0(V_b) curve of its polarity
(:func:`characterise.weights_to_bias`; out-of-range weights are clipped and counted).

The two models of the same circuit:

* bottom-up: every synapse a conductance with a reversal potential, (g, E) interpolated at its
  own gate bias from the one-cell sweeps (w = g·T·E/(C·V_swing) = I_0·T/(C·V_swing),
  β = V_swing/E), the discharger's β_fire = V_swing/E_dis, and the charge each switched
  synapse (both of its pairs) dumps on the membrane when its input ends at the start of the
  firing phase (characterised per bias; without it the bottom-up RMS error of the default
  comparison, seed 2026, is 27.7 ns instead of 7.6 ns);
* top-down: the same w (the synapse's current at the reset level, what an ideal mapping puts
  there), β = 0 and β_fire = 0: ideal current sources and an ideal discharger.

Both use the characterised C (MIM + wiring + junctions), V_0 and V_switch, so the difference
between them is the membrane-potential dependence alone. The ideal mapping is the paper's
top-down baseline, and a weak one (currents at their largest, ideal discharge); the error table
also reports two V-independent models at their best (:func:`top_down_baselines`): currents and
discharge at mid-swing, and gains fitted to the circuit runs themselves.

Spike times are measured from the start of the firing phase in units of T. The circuit's is the
first rise of the detector output through V_dd/2 in the firing phase (0 if it is already high
when the phase starts). **Rule for a neuron that does not fire** within the firing phase (model
or circuit): its time is 1, the end of the window (the clip of the paper's Eq. 27), so it
enters the RMS error with the distance to 1 of the other; the number of (trial, neuron) pairs
where exactly one of model and circuit fires is reported beside the errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from imcsim.physics import spiking
from imcsim.scenarios.circuit import characterise as ch
from imcsim.scenarios.circuit import netlist as nl
from imcsim.scenarios.circuit.ngspice import Simulator

WAVE_POINTS = 1101  # uniform resampling of the stored waveforms over the three phases
# Trials per ngspice process: parsing costs ~0.3 s per process, a 16 x 10 trial ~1-2 s, so
# 40 keeps a process well inside the runner's 600 s timeout on a busy machine.
TRIALS_PER_PROCESS = 40

# Random problem of the default comparison (normalised units). Mean and spread put v(1) of a
# 16-input neuron at 0.5 ± 0.3 or so: most spikes inside the firing window, some early, some
# late, with both polarities present (~30 % of synapses inhibitory).
WEIGHT_MEAN = 0.06
WEIGHT_STD = 0.12


@dataclass
class CircuitRun:
    """ngspice transients of B trials: spike times (B, N_out) in T from the firing phase
    start (np.inf: no spike), and waveforms resampled on ``t_wave`` (s)."""

    t_spike: np.ndarray
    t_wave: np.ndarray
    v_mem: np.ndarray  # (B, N_out, K) membrane node (V)
    v_out: np.ndarray  # (B, N_out, K) detector output (V)
    netlist: str
    wall_s: float


def run_circuit(sim: Simulator, design: nl.CoreDesign, parasitics: nl.Parasitics,
                t_in: np.ndarray, bias_n: np.ndarray, bias_p: np.ndarray) -> CircuitRun:
    """The trials in as few ngspice processes as the timeout allows: up to
    ``TRIALS_PER_PROCESS`` per process (:func:`netlist.trial_deck`, ``alter`` between
    trials); ``wall_s`` is the sum over the processes."""
    results, wall, listing = [], 0.0, ""
    for start in range(0, t_in.shape[0], TRIALS_PER_PROCESS):
        part = slice(start, start + TRIALS_PER_PROCESS)
        deck = nl.trial_deck(design, parasitics, t_in[part], bias_n[part], bias_p[part])
        results += sim.run(deck.circuit, deck.analyses, title="imcsim compare-circuit")
        wall += sim.last_wall_s
        if start == 0:
            listing = deck.circuit + "\n* per-trial commands\n" + "\n\n".join(
                cmd for cmd, _ in deck.analyses)
    n_b, n_out = t_in.shape[0], bias_n.shape[1]
    t_wave = np.linspace(0.0, design.t_stop_s, WAVE_POINTS)
    v_mem = np.empty((n_b, n_out, WAVE_POINTS))
    v_out = np.empty_like(v_mem)
    t_spike = np.empty((n_b, n_out))
    for b, r in enumerate(results):
        t = r["scale"]
        for i in range(n_out):
            mem, out = r[f"v({deck.mem_nodes[i]})"], r[f"v({deck.out_nodes[i]})"]
            v_mem[b, i] = np.interp(t_wave, t, mem)
            v_out[b, i] = np.interp(t_wave, t, out)
            t_cross = ch.detector_crossing(t, out, design.t_fire_s, design.vdd_v)
            t_spike[b, i] = (t_cross - design.t_fire_s) / design.t_phase_s
    return CircuitRun(t_spike, t_wave, v_mem, v_out, listing, wall)


@dataclass
class ModelParams:
    """Both models of a batch of cores: w, β (B, N_in, N_out), β_fire, and the bottom-up
    model's end-of-input charge packet Δv of each synapse (B, N_in, N_out)."""

    w: np.ndarray
    beta_bottom_up: np.ndarray
    beta_fire: float
    end_packet: np.ndarray


def model_params(char: ch.Characterisation, bias_n: np.ndarray, bias_p: np.ndarray
                 ) -> ModelParams:
    w, beta = ch.synapse_model(char, bias_n, bias_p)
    packet = char.end_packets(bias_n, bias_p)
    return ModelParams(np.swapaxes(w, 1, 2), np.swapaxes(beta, 1, 2), char.beta_fire,
                       np.swapaxes(packet, 1, 2))


def model_spike_times(t_in: np.ndarray, params: ModelParams, bottom_up: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(t_out (B, N_out) clipped to the window, v(1)) of one model, trial by trial (every
    trial has its own weights).

    Bottom-up: the exact RC-Spike closed form with each synapse's (w, β) and β_fire, plus
    the charge each synapse whose input spiked dumps on the membrane when its selector opens
    at the end of the phase (a jump Δv = q_off/(C·V_swing) at the start of the firing
    phase, characterised per bias; an input that never spiked never switched). Top-down:
    β = 0, β_fire = 0, no packets."""
    n_b, n_out = t_in.shape[0], params.w.shape[2]
    t_out = np.empty((n_b, n_out))
    v_end = np.empty_like(t_out)
    for b in range(n_b):
        beta = params.beta_bottom_up[b] if bottom_up else np.zeros_like(params.w[b])
        _, v = spiking.layer_spike_times(t_in[b:b + 1], params.w[b], beta, clipped=True,
                                         return_v_end=True)
        if bottom_up:
            spiked = (t_in[b] < 1.0).astype(float)
            v = v + spiked @ params.end_packet[b]
        v_end[b] = v[0]
        t_out[b] = spiking.firing_times(v[0], beta_fire=params.beta_fire if bottom_up else 0.0,
                                        clipped=True)
    return t_out, v_end


def top_down_times(t_in: np.ndarray, params: ModelParams, gain_pos: float, gain_neg: float,
                   fire_rate: float) -> np.ndarray:
    """Output times (B, N_out), clipped to the window, of a top-down model (β = 0, constant
    currents, linear firing ramp) whose excitatory and inhibitory currents are the realised
    w scaled by ``gain_pos`` / ``gain_neg`` and whose discharge runs at ``fire_rate``."""
    t_out = np.empty((t_in.shape[0], params.w.shape[2]))
    for b in range(t_in.shape[0]):
        w = params.w[b]
        w = np.where(w >= 0.0, gain_pos * w, gain_neg * w)
        _, v = spiking.layer_spike_times(t_in[b:b + 1], w, np.zeros_like(w), clipped=True,
                                         return_v_end=True)
        t_out[b] = spiking.firing_times(v[0], fire_rate=fire_rate, clipped=True)
    return t_out


def top_down_baselines(t_in: np.ndarray, params: ModelParams, t_circuit: np.ndarray
                       ) -> dict:
    """Two stronger top-down models than the ideal mapping, so that the bottom-up model is
    measured against the V-independent model at its best (name -> (times, gains)):

    * ``top_down_mid``: what a modeller with the one-cell characterisation but no V
      dependence would use: each synapse's current and the discharger's rate at mid-swing,
      v = 1/2: I(v)/I(V_0) = 1 − β·v, averaged over the synapses of each polarity, and
      rate 1 − β_fire/2;
    * ``top_down_fit``: an in-sample oracle: the two current gains and the firing rate
      fitted (Nelder-Mead on the RMS error) to the circuit's own spike times of these very
      trials. No model could know these without running the circuit; it bounds what any
      V-independent model with per-polarity gains can reach.
    """
    from scipy.optimize import minimize

    w, beta = params.w, params.beta_bottom_up
    pos, neg = w >= 0.0, w < 0.0
    mid = (float(np.mean(1.0 - 0.5 * beta[pos])) if pos.any() else 1.0,
           float(np.mean(1.0 - 0.5 * beta[neg])) if neg.any() else 1.0,
           1.0 - 0.5 * params.beta_fire)
    tc = np.minimum(t_circuit, 1.0)

    def rms(x):
        return float(np.sqrt(np.mean((top_down_times(t_in, params, *x) - tc) ** 2)))

    fit = minimize(rms, np.array(mid), method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 600})
    return {"top_down_mid": (top_down_times(t_in, params, *mid), mid),
            "top_down_fit": (top_down_times(t_in, params, *fit.x), tuple(map(float, fit.x)))}


def spike_time_errors(t_model: np.ndarray, t_circuit: np.ndarray) -> dict:
    """RMS and max |error| (units of T) under the no-spike rule of the module doc, and the
    count of pairs where exactly one of the two fires."""
    tm = np.minimum(t_model, 1.0)
    tc = np.minimum(t_circuit, 1.0)
    diff = tm - tc
    fired_m = t_model < 1.0
    fired_c = t_circuit < 1.0
    return {"rms": float(np.sqrt(np.mean(diff**2))), "max_abs": float(np.max(np.abs(diff))),
            "mean": float(np.mean(diff)), "firing_disagreements": int(np.sum(fired_m != fired_c)),
            "both_fired": int(np.sum(fired_m & fired_c))}


@dataclass
class Comparison:
    """Everything one comparison produced (inputs, parameters, times, waveforms, errors)."""

    seed: int
    t_in: np.ndarray  # (B, N_in), T
    w_target: np.ndarray  # (B, N_in, N_out)
    bias_n: np.ndarray  # (B, N_out, N_in), V
    bias_p: np.ndarray
    n_clipped: int
    params: ModelParams
    char: ch.Characterisation
    circuit: CircuitRun
    t_bottom_up: np.ndarray
    t_top_down: np.ndarray
    v_end_bottom_up: np.ndarray
    v_end_top_down: np.ndarray
    errors: dict = field(default_factory=dict)
    model_wall_s: float = float("nan")
    characterise_wall_s: float = float("nan")


def draw_problem(seed: int, n_in: int, n_out: int, trials: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Random input times U(0, 1) (B, N_in) and weights N(WEIGHT_MEAN, WEIGHT_STD)
    (B, N_in, N_out) from a numpy Generator seeded by ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    t_in = rng.random((trials, n_in))
    w = WEIGHT_MEAN + WEIGHT_STD * rng.standard_normal((trials, n_in, n_out))
    return t_in, w


def compare(sim: Simulator, design: nl.CoreDesign, parasitics: nl.Parasitics, t_in,
            w_target, seed: int = 0, char: ch.Characterisation | None = None) -> Comparison:
    """Characterise (unless given), map ``w_target`` (B, N_in, N_out) to biases, run the
    circuit and both models on ``t_in`` (B, N_in), and measure the spike-time errors."""
    t0 = time.perf_counter()
    if char is None:
        char = ch.characterise(sim, design, parasitics, t_in.shape[1])
    t_char = time.perf_counter() - t0
    design = nl.CoreDesign(**{**char.design, "v_dis_bias_v": char.v_dis_bias_v})
    bias_n, bias_p, _, n_clipped = ch.weights_to_bias(char, np.swapaxes(w_target, 1, 2))
    params = model_params(char, bias_n, bias_p)
    circuit = run_circuit(sim, design, parasitics, t_in, bias_n, bias_p)
    model_spike_times(t_in[:1], params, True)  # compile / load the kernel outside the timing
    t0 = time.perf_counter()
    t_bu, v_bu = model_spike_times(t_in, params, True)
    t_td, v_td = model_spike_times(t_in, params, False)
    model_wall = (time.perf_counter() - t0) / 2
    errors = {"bottom_up": spike_time_errors(t_bu, circuit.t_spike),
              "top_down": spike_time_errors(t_td, circuit.t_spike)}
    for name, (times, gains) in top_down_baselines(t_in, params, circuit.t_spike).items():
        errors[name] = {**spike_time_errors(times, circuit.t_spike), "gains": gains}
    return Comparison(seed, t_in, w_target, bias_n, bias_p, n_clipped, params, char, circuit,
                      t_bu, t_td, v_bu, v_td, errors, model_wall, t_char)


def model_membrane_volts(cmp: Comparison, trial: int, bottom_up: bool
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Model membrane trajectory of one trial in circuit units: (t (s), V (N_out, K))
    over accumulation and firing phases, V = V_0 − v·V_swing."""
    c, p = cmp.char, cmp.params
    t_norm = np.linspace(0.0, 2.0, 401)
    beta = p.beta_bottom_up[trial] if bottom_up else np.zeros_like(p.w[trial])
    v = spiking.membrane_potential(cmp.t_in[trial], p.w[trial], beta, t_norm,
                                   beta_fire=p.beta_fire if bottom_up else 0.0)
    t_s = float(c.design["t_reset_s"]) + t_norm * c.t_phase_s
    return t_s, (c.v0_v - v * c.v_swing_v).T


# ----------------------------------------------------------------------------------------
# A trained network on the circuit


@dataclass
class TrainedCheck:
    """A DSTD-trained single-layer network (16 pooled-digit inputs -> 10 classes) per model,
    mapped to the circuit and run through ngspice on ``n_test`` test digits."""

    labels: np.ndarray  # (n_test,)
    t_in: np.ndarray  # (n_test, 16), T
    weights: dict  # model -> (16, 10)
    n_clipped: dict
    t_circuit: dict  # model -> (n_test, 10), T (np.inf: no spike)
    t_model: dict  # model -> (n_test, 10), T, the exact core it was trained for
    accuracy_model_full: dict  # on the whole test split, exact core
    accuracy_model: dict  # on the n_test digits
    accuracy_circuit: dict
    agreement: dict  # fraction of the n_test digits where circuit and model predict alike
    e_train: dict  # E+, E-, E_dis used for the bottom-up training
    wall_s: float


def _predict(t: np.ndarray) -> np.ndarray:
    """Earliest output spike wins (the paper's decoding); no spike at all: class -1."""
    pred = np.argmin(t, axis=1)
    return np.where(np.isfinite(t).any(axis=1), pred, -1)


def trained_network_check(sim: Simulator, design: nl.CoreDesign, parasitics: nl.Parasitics,
                          char: ch.Characterisation, n_test: int, seed: int,
                          epochs: int = 30) -> TrainedCheck:
    """Train bottom-up (E₊, E₋ at the characterised w = 0.1 bias, E_dis of the discharger)
    and top-down (β = 0) by DSTD with :func:`imcsim.scenarios.spiking.train` (same seed,
    same data), map both weight sets to gate biases and run the first ``n_test`` test digits
    through ngspice (both networks in one process). The top-down network goes to the
    circuit twice: with the ideal mapping (current at the reset level = trained weight) and
    as ``top_down_mid``, currents matching the weights at mid-swing — its best simple
    mapping."""
    from imcsim.scenarios import spiking as study

    t0 = time.perf_counter()
    summary = char.summary()
    e_train = {"e_plus": summary["E_n_at_w0.1"], "e_minus": summary["E_p_at_w0.1"],
               "e_dis": summary["E_dis"]}
    cfg = study.SpikingConfig(hidden=(), epochs=epochs, seed=seed, **e_train)
    data = study.load_data(cfg)
    t_in = data.x_test[:n_test]
    labels = data.y_test[:n_test]
    d = nl.CoreDesign(**{**char.design, "v_dis_bias_v": char.v_dis_bias_v})
    out = {k: {} for k in ("weights", "n_clipped", "t_circuit", "t_model", "acc_full", "acc",
                           "acc_c", "agree")}
    biases = {}
    nets = {}
    for model in ("bottom_up", "top_down", "top_down_mid"):
        if model == "top_down_mid":
            # The top-down network mapped at its best: each current set so that it equals
            # the trained weight at mid-swing (v = 1/2) instead of at the reset level.
            net = nets["top_down"]
            beta = np.where(net.weights[0] >= 0.0, 1.0 / e_train["e_plus"],
                            1.0 / e_train["e_minus"])
            w_map = net.weights[0] / (1.0 - 0.5 * beta)
        else:
            net = nets[model] = study.train(cfg, model, "dstd", data)
            w_map = net.weights[0]
        w = net.weights[0]
        bias_n, bias_p, _, clipped = ch.weights_to_bias(char, w_map.T[None])
        biases[model] = (bias_n, bias_p)
        out["weights"][model], out["n_clipped"][model] = w, clipped
        out["t_model"][model] = net.spike_times(t_in)
        out["acc_full"][model] = net.accuracy(data.x_test, data.y_test)
        out["acc"][model] = float(np.mean(_predict(out["t_model"][model]) == labels))
    n = t_in.shape[0]
    all_t = np.concatenate([t_in] * len(biases))
    all_n = np.concatenate([np.repeat(biases[m][0], n, axis=0) for m in biases])
    all_p = np.concatenate([np.repeat(biases[m][1], n, axis=0) for m in biases])
    run = run_circuit(sim, d, parasitics, all_t, all_n, all_p)
    for k, model in enumerate(biases):
        t_c = run.t_spike[k * n:(k + 1) * n]
        out["t_circuit"][model] = t_c
        out["acc_c"][model] = float(np.mean(_predict(t_c) == labels))
        out["agree"][model] = float(np.mean(_predict(t_c) == _predict(out["t_model"][model])))
    return TrainedCheck(labels, t_in, out["weights"], out["n_clipped"], out["t_circuit"],
                        out["t_model"], out["acc_full"], out["acc"], out["acc_c"],
                        out["agree"], e_train, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# Trace file

NO_SPIKE_RULE = ("a neuron that does not fire within the firing phase (model or circuit) is "
                 "given t = 1 T, the end of the window (clip of Sakemi et al. Eq. 27); "
                 "firing_disagreements counts pairs where exactly one fires")
TOP_DOWN_DEFINITION = ("top-down: same w as bottom-up, i.e. w = I(V_0)*T/(C*V_swing) with "
                       "I(V_0) the synapse current at the post-reset level V_0 (the ideal "
                       "mapping of the paper's Table 2), beta = 0, beta_fire = 0, no "
                       "switching packets; C, V_0, V_swing are the characterised values")


def write_trace(path, cmp: Comparison, options: dict, sim: Simulator, *,
                overwrite: bool = False, trained: TrainedCheck | None = None) -> None:
    """The comparison as an imcsim trace (every dataset with units; readable with h5py)."""
    import json

    from imcsim.store import TraceWriter

    c = cmp.char
    with TraceWriter(path, overwrite=overwrite) as tw:
        tw.set_attrs(run_name="compare_circuit", seed=cmp.seed, scenario_kind="circuit",
                     scenario_toml="", scenario_resolved=json.dumps(options),
                     netlist=cmp.circuit.netlist, parasitics=json.dumps(c.parasitics),
                     design=json.dumps({**c.design, "v_dis_bias_v": c.v_dis_bias_v}),
                     characterisation=json.dumps(c.summary()), no_spike_rule=NO_SPIKE_RULE,
                     top_down=TOP_DOWN_DEFINITION, sky130_library=str(sim.library),
                     ngspice=str(sim.ngspice), trimmed_library=bool(sim.trim))
        s = tw.static
        s("t_in", cmp.t_in, "T", "input spike times (trial, input) in phase lengths from the "
          "start of the accumulation phase", group="inputs")
        s("w_target", cmp.w_target, "1", "drawn normalised weights (trial, input, neuron)",
          group="inputs")
        s("bias_n", cmp.bias_n, "V", "nfet current-source gate bias (trial, neuron, input); "
          "0 = pair off", group="inputs")
        s("bias_p", cmp.bias_p, "V", "pfet current-source gate bias (trial, neuron, input); "
          "V_dd = pair off", group="inputs")
        p = cmp.params
        s("w", p.w, "1", "realised normalised weight of each synapse (trial, input, neuron): "
          "I(V_0)*T/(C*V_swing); both models", group="model")
        s("beta_bottom_up", p.beta_bottom_up, "1", "V_swing/E of each synapse, bottom-up "
          "model (the top-down model has beta = 0)", group="model")
        s("end_packet", p.end_packet, "1", "bottom-up: jump of v when the synapse's input "
          "ends (q_off/(C*V_swing), both pairs)", group="model")
        s("t_bottom_up", cmp.t_bottom_up, "T", "bottom-up output spike times from the firing "
          "phase start (clipped to 1)", group="model")
        s("t_top_down", cmp.t_top_down, "T", "top-down output spike times (clipped to 1)",
          group="model")
        s("v_end_bottom_up", cmp.v_end_bottom_up, "V_swing", "bottom-up v at the end of "
          "accumulation (incl. end packets)", group="model")
        s("v_end_top_down", cmp.v_end_top_down, "V_swing", "top-down v at the end of "
          "accumulation", group="model")
        r = cmp.circuit
        s("t_spike", r.t_spike, "T", "circuit output spike times: detector output rising "
          "through V_dd/2, from the firing phase start (inf: none)", group="circuit")
        s("t_wave", r.t_wave, "s", "time axis of the waveforms (reset starts at 0)",
          group="circuit")
        s("v_mem", r.v_mem.astype(np.float32), "V", "membrane node (trial, neuron, time)",
          group="circuit")
        s("v_out", r.v_out.astype(np.float32), "V", "detector output (trial, neuron, time)",
          group="circuit")
        g = "characterisation"
        s("sweep_v", c.sweep_v, "V", "membrane voltage of the one-cell sweeps", group=g)
        for pol, fit, cur in (("nfet", c.nfet, c.nfet_current_a),
                              ("pfet", c.pfet, c.pfet_current_a)):
            s(f"{pol}_bias", fit.bias_v, "V", f"{pol} current-source gate bias grid", group=g)
            s(f"{pol}_current", cur, "A", f"{pol} synapse current magnitude (bias, V)",
              group=g)
            s(f"{pol}_g", fit.g_s, "S", f"{pol} fitted slope g of I = g*(V - V_E)", group=g)
            s(f"{pol}_e_rev", c.v0_v - fit.v_e_v, "V", f"{pol} reversal potential "
              "E = V_0 - V_E (excursion toward threshold)", group=g)
            s(f"{pol}_i0", fit.i0_a, "A", f"{pol} current at the post-reset level", group=g)
        s("dis_bias", c.dis_bias_v, "V", "discharger gate bias grid", group=g)
        s("dis_current", c.dis_current_a, "A", "discharger current (bias, V)", group=g)
        s("packet_bias_n", c.packet_bias_n_v, "V", "nfet bias grid of the packets", group=g)
        s("q_on_n", c.q_on_n_c, "C", "charge drawn from the membrane when an nfet pair's "
          "input starts", group=g)
        s("q_off_n", c.q_off_n_c, "C", "... when it ends", group=g)
        s("packet_bias_p", c.packet_bias_p_v, "V", "pfet bias grid of the packets", group=g)
        s("q_on_p", c.q_on_p_c, "C", "charge drawn when a pfet pair's input starts",
          group=g)
        s("q_off_p", c.q_off_p_c, "C", "... when it ends", group=g)
        table = metrics(cmp, trained)
        if trained is not None:
            s("labels", trained.labels, "1", "test digit classes", group="trained")
            s("t_in", trained.t_in, "T", "input spike times of the test digits",
              group="trained")
            for m in trained.weights:
                s(f"w_{m}", trained.weights[m], "1", f"weights trained for the {m} model "
                  "(input, class)", group="trained")
                s(f"t_circuit_{m}", trained.t_circuit[m], "T", "circuit output spike times "
                  "(inf: none)", group="trained")
                s(f"t_model_{m}", trained.t_model[m], "T", "exact model output spike times "
                  "(inf: none)", group="trained")
        for name, (units, _) in table.items():
            tw.declare_metric(name, units, name.replace("_", " "))
        tw.begin()
        for name, (_, value) in table.items():
            tw.set_metric(name, float(value))


def metrics(cmp: Comparison, trained: TrainedCheck | None = None) -> dict:
    """Scalar results: name -> (units, value)."""
    e = cmp.errors
    t_phase = cmp.char.t_phase_s
    out = {
        "rms_bottom_up": ("T", e["bottom_up"]["rms"]),
        "rms_top_down": ("T", e["top_down"]["rms"]),
        "rms_bottom_up_s": ("s", e["bottom_up"]["rms"] * t_phase),
        "rms_top_down_s": ("s", e["top_down"]["rms"] * t_phase),
        "rms_ratio": ("1", e["bottom_up"]["rms"] / e["top_down"]["rms"]),
        "max_abs_bottom_up": ("T", e["bottom_up"]["max_abs"]),
        "max_abs_top_down": ("T", e["top_down"]["max_abs"]),
        "mean_bottom_up": ("T", e["bottom_up"]["mean"]),
        "mean_top_down": ("T", e["top_down"]["mean"]),
        **{f"{key}_{name}": ("T" if key != "disagree" else "1", e[name][field])
           for name in ("top_down_mid", "top_down_fit") if name in e
           for key, field in (("rms", "rms"), ("max_abs", "max_abs"), ("mean", "mean"),
                              ("disagree", "firing_disagreements"))},
        **{f"rms_ratio_{name}": ("1", e["bottom_up"]["rms"] / e[name]["rms"])
           for name in ("top_down_mid", "top_down_fit") if name in e},
        "disagree_bottom_up": ("1", e["bottom_up"]["firing_disagreements"]),
        "disagree_top_down": ("1", e["top_down"]["firing_disagreements"]),
        "circuit_fired": ("1", int(np.sum(cmp.circuit.t_spike < 1.0))),
        "pairs": ("1", int(cmp.circuit.t_spike.size)),
        "n_clipped": ("1", cmp.n_clipped),
        "characterise_wall": ("s", cmp.characterise_wall_s),
        "ngspice_wall": ("s", cmp.circuit.wall_s),
        "model_wall": ("s", cmp.model_wall_s),
        "speed_ratio": ("1", cmp.circuit.wall_s / cmp.model_wall_s),
    }
    if trained is not None:
        for m in trained.weights:
            out[f"acc_model_full_{m}"] = ("1", trained.accuracy_model_full[m])
            out[f"acc_model_{m}"] = ("1", trained.accuracy_model[m])
            out[f"acc_circuit_{m}"] = ("1", trained.accuracy_circuit[m])
            out[f"agreement_{m}"] = ("1", trained.agreement[m])
            out[f"n_clipped_{m}"] = ("1", trained.n_clipped[m])
        out["trained_n_test"] = ("1", trained.labels.size)
    return out
