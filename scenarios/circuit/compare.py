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
  β = V_swing/E), and the discharger's β_fire = V_swing/E_dis;
* top-down: the same w (the synapse's current at the reset level, what an ideal mapping puts
  there), β = 0 and β_fire = 0: ideal current sources and an ideal discharger.

Both use the characterised C (MIM + wiring + junctions), V_0 and V_switch, so the difference
between them is the membrane-potential dependence alone.

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
    """All trials in one ngspice process (:func:`netlist.trial_deck`)."""
    deck = nl.trial_deck(design, parasitics, t_in, bias_n, bias_p)
    results = sim.run(deck.circuit, deck.analyses, title="imcsim compare-circuit")
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
    listing = deck.circuit + "\n* per-trial commands\n" + "\n\n".join(
        cmd for cmd, _ in deck.analyses)
    return CircuitRun(t_spike, t_wave, v_mem, v_out, listing, sim.last_wall_s)


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
