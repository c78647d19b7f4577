"""Post-layout-style ngspice netlist of the charge-domain RC-Spike core (Sakemi et al., arXiv
2412.09010 v1, Fig. 6 and App. G), built from sky130 ``nfet_01v8`` / ``pfet_01v8`` devices.

Circuit (one neuron column; a core is N_out columns sharing N_in word lines; a batch of trials is
independent copies of the core in one netlist)::

             reset pfet (gate RSTB)            discharger: nfet (V_dis), switch (PHASE)
    V_reset ──┤├── m ─┬─ C_mem ─ gnd            m ──┤├(V_dis) ── x ──┤├(PHASE) ── gnd
                      │
                      ├─ bit line: R_bl, C_bl per cell ─ cell j ─ cell j+1 ─ ...
                      │
                      └─ threshold detector: pfet (V_sense) ─ pfet(m) ─ out ─ nfet(m) ─ gnd

    synapse (i, j), current source's drain on the bit line at cell j, selector at the rail:
      positive weight (discharges m): NM_ij (gate = V_b^N) in series with NS_ij (gate = spike_j)
      negative weight (charges m):    PM_ij (gate = V_b^P) in series with PS_ij (gate = /spike_j)
      both pairs W/L = 1 µm / 250 nm; the unused pair is biased off (V_b^N = 0, V_b^P = V_dd).

Phases (paper Fig. 6b; T = 1 µs per phase): reset (RSTB low: m is tied to V_reset = 1.3 V),
accumulation (input j's word line steps 0 -> V_dd at t_reset + t_j·T and stays up to the end
of the phase: the paper's step input; it falls when the firing phase starts, since the layer
before is then being reset, paper Fig. 6b), firing (PHASE high: the
discharger pulls m down at a near-constant rate; the detector's output rises when m falls
below its switching voltage). The membrane is inverted in polarity (paper Eq. 72):
v = (V_0 − V)/V_swing with V_swing = V_0 − V_switch.

Reconstructions (not from the paper, which gives no netlist): the reset phase is shortened to
0.2 µs (a 103 fF node settles through the reset pfet in ~1 ns); the reset switch is one pfet;
the threshold detector is a current-starved inverter of regular-V_t devices (the paper uses an
LVT nfet and HVT pfet; the trimmed library holds only the two 1.8 V devices), sized so that it
switches near the paper's 0.428 V; in a synapse the current source sits on the bit line and the
selector at the rail (current steering: the node between them is already near the rail when
the selector closes, so little charge is shared with the membrane; with the selector on the
bit line instead we measured ~0.9 fC per spike, 0.008 V_swing, which over 16 inputs rivals
the effect under study).

Parasitics (:class:`Parasitics`): the bit line runs in metal2 through the N_in synapse cells of
a column, the word lines in metal1 through the N_out cells of a row; each cell pitch adds a
series R and a C to ground (π-less lumped ladder, one node per cell). Per-unit values: see the
class. Transistor junction and gate capacitances come from the BSIM4 models themselves (no
ad/as/pd/ps are given, so the model's zero-area defaults apply: a conservative, low estimate
of junction capacitance — an assumption).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NFET = "sky130_fd_pr__nfet_01v8"
PFET = "sky130_fd_pr__pfet_01v8"


@dataclass(frozen=True)
class Parasitics:
    """Layout-style wire parasitics per synapse-cell pitch (SI units).

    Source of the per-unit values: the sky130 technology LEF of the standard-cell library
    (``sky130_fd_sc_hd.tlef``): metal1 and metal2 both RPERSQ 0.125 Ω/□ at the minimum width
    0.14 µm; capacitance to substrate CPERSQDIST 25.8 / 16.9 aF/µm² and EDGECAPACITANCE
    40.6 / 37.8 aF/µm (met1 / met2), i.e. 0.085 / 0.078 fF/µm for a minimum-width line. We
    use 0.12 fF/µm to add the coupling to the neighbouring lines of a dense array (an
    ASSUMPTION, ~40 % over the substrate value). The cell pitches (4 µm along the bit line,
    6 µm along the word line: four 1 µm / 0.25 µm devices with contacts and an n-well) are
    ASSUMPTIONS for a compact synapse block; the paper does not dimension its block.
    ``neuron_wire_c_f`` is the routing from the array to the MIM capacitor (assumption).
    Per cell this gives R = 3.6 Ω and C = 0.48 fF on the bit line (metal2), R = 5.4 Ω and
    C = 0.72 fF on a word line (metal1). Vias are not modelled (a few Ω each, against
    transistor resistances of tens of kΩ and more).
    """

    cell_pitch_bitline_m: float = 4.0e-6
    cell_pitch_wordline_m: float = 6.0e-6
    sheet_r_met1_ohm_sq: float = 0.125
    sheet_r_met2_ohm_sq: float = 0.125
    wire_width_m: float = 0.14e-6
    wire_c_per_m: float = 0.12e-15 / 1e-6
    neuron_wire_c_f: float = 2.0e-15

    @property
    def bitline_r_per_cell_ohm(self) -> float:
        return self.sheet_r_met2_ohm_sq * self.cell_pitch_bitline_m / self.wire_width_m

    @property
    def bitline_c_per_cell_f(self) -> float:
        return self.wire_c_per_m * self.cell_pitch_bitline_m

    @property
    def wordline_r_per_cell_ohm(self) -> float:
        return self.sheet_r_met1_ohm_sq * self.cell_pitch_wordline_m / self.wire_width_m

    @property
    def wordline_c_per_cell_f(self) -> float:
        return self.wire_c_per_m * self.cell_pitch_wordline_m

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(bitline_r_per_cell_ohm=self.bitline_r_per_cell_ohm,
                 bitline_c_per_cell_f=self.bitline_c_per_cell_f,
                 wordline_r_per_cell_ohm=self.wordline_r_per_cell_ohm,
                 wordline_c_per_cell_f=self.wordline_c_per_cell_f)
        return d


@dataclass(frozen=True)
class CoreDesign:
    """Design values of the core (SI units). Paper values: V_dd, V_reset, T, W/L, C_mem
    (103.3 fF, the MIM capacitor of App. G / Fig. 18; Table 2 says 140 fF — we use the layout
    value), V_sense 0.95 V. ``v_dis_bias_v`` is the paper's 0.554 V by default; the
    characterisation replaces it with the bias at which an unstimulated neuron fires exactly
    at the end of the firing phase (the paper's own criterion, App. G / footnote of Eq. 84).
    Detector sizes are our reconstruction (see the module docstring)."""

    vdd_v: float = 1.8
    v_reset_v: float = 1.3
    c_mem_f: float = 103.3e-15
    t_phase_s: float = 1.0e-6
    t_reset_s: float = 0.2e-6
    t_edge_s: float = 1.0e-9
    synapse_w_um: float = 1.0
    synapse_l_um: float = 0.25
    v_dis_bias_v: float = 0.554
    v_sense_bias_v: float = 0.95
    detector_n_w_um: float = 2.0
    detector_n_l_um: float = 0.15
    detector_p_w_um: float = 0.42
    detector_p_l_um: float = 1.0

    @property
    def t_accumulate_s(self) -> float:
        """Start of the accumulation phase (s)."""
        return self.t_reset_s

    @property
    def t_fire_s(self) -> float:
        """Start of the firing phase (s)."""
        return self.t_reset_s + self.t_phase_s

    @property
    def t_stop_s(self) -> float:
        return self.t_reset_s + 2.0 * self.t_phase_s + 5e-9


def _fmt(x: float) -> str:
    return f"{x:.9g}"


def _pwl_points(t_s: float, v_from: float, v_to: float, edge_s: float,
                t_end_s: float = np.inf) -> str:
    """PWL points of a pulse from ``t_s`` to ``t_end_s`` (np.inf: a step that stays; a
    non-finite ``t_s``: no pulse). Always five points, so that ``alter`` can swap one
    trial's word-line drive for another's."""
    far = 1.0  # s, beyond any transient here
    if not np.isfinite(t_s):
        return " ".join(f"{t:.9g} {_fmt(v_from)}" for t in (0, far, 2 * far, 3 * far, 4 * far))
    t_end = min(t_end_s, 2 * far)
    t_end = max(t_end, t_s + 2 * edge_s)
    level_end = v_from if np.isfinite(t_end_s) else v_to
    return (f"0 {_fmt(v_from)} {_fmt(t_s)} {_fmt(v_from)} {_fmt(t_s + edge_s)} {_fmt(v_to)} "
            f"{_fmt(t_end)} {_fmt(v_to)} {_fmt(t_end + edge_s)} {_fmt(level_end)}")


def _step(t_s: float, v_from: float, v_to: float, edge_s: float) -> str:
    return f"PWL({_pwl_points(t_s, v_from, v_to, edge_s)})"


def supplies(design: CoreDesign) -> list[str]:
    """Supplies and the phase signals shared by every copy of the core."""
    d = design
    return [
        f"Vdd vdd 0 {_fmt(d.vdd_v)}",
        f"Vrst_level vrl 0 {_fmt(d.v_reset_v)}",
        f"Vdis_bias vdis 0 {_fmt(d.v_dis_bias_v)}",
        f"Vsense_bias vsense 0 {_fmt(d.v_sense_bias_v)}",
        # RSTB: low (reset pfet on) during the reset phase
        f"Vrstb rstb 0 {_step(d.t_accumulate_s - d.t_edge_s, 0.0, d.vdd_v, d.t_edge_s)}",
        # PHASE: high during the firing phase
        f"Vphase phase 0 {_step(d.t_fire_s, 0.0, d.vdd_v, d.t_edge_s)}",
    ]


def neuron(design: CoreDesign, mem: str, out: str, tag: str) -> list[str]:
    """Membrane capacitor, reset switch, discharger and threshold detector of one neuron."""
    d = design
    return [
        f"Cmem_{tag} {mem} 0 {_fmt(d.c_mem_f)}",
        f"Xrst_{tag} {mem} rstb vrl vdd {PFET} w=1 l=0.15",
        f"Xdis_{tag} {mem} vdis dx_{tag} 0 {NFET} w={_fmt(d.synapse_w_um)} "
        f"l={_fmt(d.synapse_l_um)}",
        f"Xdsw_{tag} dx_{tag} phase 0 0 {NFET} w=1 l=0.15",
        f"Xdsp_{tag} dp_{tag} vsense vdd vdd {PFET} w={_fmt(d.detector_p_w_um)} "
        f"l={_fmt(d.detector_p_l_um)}",
        f"Xdip_{tag} {out} {mem} dp_{tag} vdd {PFET} w={_fmt(d.detector_p_w_um)} "
        f"l={_fmt(d.detector_p_l_um)}",
        f"Xdin_{tag} {out} {mem} 0 0 {NFET} w={_fmt(d.detector_n_w_um)} "
        f"l={_fmt(d.detector_n_l_um)}",
    ]


def synapse(design: CoreDesign, bitline: str, spike: str, spike_b: str, bias_n: float,
            bias_p: float, tag: str) -> list[str]:
    """Both transistor pairs of one synapse; the pair not in use is biased off."""
    w, ln = _fmt(design.synapse_w_um), _fmt(design.synapse_l_um)
    return [
        f"Xnm_{tag} {bitline} bn_{tag} ni_{tag} 0 {NFET} w={w} l={ln}",
        f"Xns_{tag} ni_{tag} {spike} 0 0 {NFET} w={w} l={ln}",
        f"Vbn_{tag} bn_{tag} 0 {_fmt(bias_n)}",
        f"Xpm_{tag} {bitline} bp_{tag} pi_{tag} vdd {PFET} w={w} l={ln}",
        f"Xps_{tag} pi_{tag} {spike_b} vdd vdd {PFET} w={w} l={ln}",
        f"Vbp_{tag} bp_{tag} 0 {_fmt(bias_p)}",
    ]


def core(design: CoreDesign, parasitics: Parasitics, t_in: np.ndarray, bias_n: np.ndarray,
         bias_p: np.ndarray, prefix: str) -> tuple[list[str], list[str], list[str]]:
    """One copy of an N_in × N_out core: word-line drivers and ladders, synapses, bit-line
    ladders and neurons. ``t_in`` (N_in,) input spike times in units of T (np.inf: none);
    ``bias_n``/``bias_p`` (N_out, N_in) gate biases (V). Returns (lines, membrane nodes,
    detector output nodes)."""
    d, p = design, parasitics
    n_out, n_in = bias_n.shape
    lines: list[str] = []
    r_wl, c_wl = _fmt(p.wordline_r_per_cell_ohm), _fmt(p.wordline_c_per_cell_f)
    r_bl, c_bl = _fmt(p.bitline_r_per_cell_ohm), _fmt(p.bitline_c_per_cell_f)
    for j in range(n_in):
        t_abs = _word_line_time(d, t_in[j])
        lines.append(f"Vw{prefix}_{j} w{prefix}_{j}_d 0 "
                     f"PWL({_pwl_points(t_abs, 0.0, d.vdd_v, d.t_edge_s, d.t_fire_s)})")
        lines.append(f"Vwb{prefix}_{j} wb{prefix}_{j}_d 0 "
                     f"PWL({_pwl_points(t_abs, d.vdd_v, 0.0, d.t_edge_s, d.t_fire_s)})")
        for line, drv in (("w", f"w{prefix}_{j}_d"), ("wb", f"wb{prefix}_{j}_d")):
            prev = drv
            for i in range(n_out):
                node = f"{line}{prefix}_{j}_{i}"
                lines.append(f"R{node} {prev} {node} {r_wl}")
                lines.append(f"C{node} {node} 0 {c_wl}")
                prev = node
    mems, outs = [], []
    for i in range(n_out):
        mem, out = f"m{prefix}_{i}", f"s{prefix}_{i}"
        mems.append(mem)
        outs.append(out)
        lines += neuron(d, mem, out, f"{prefix}_{i}")
        lines.append(f"Cnw{prefix}_{i} {mem} 0 {_fmt(p.neuron_wire_c_f)}")
        prev = mem
        for j in range(n_in):
            node = f"bl{prefix}_{i}_{j}"
            lines.append(f"R{node} {prev} {node} {r_bl}")
            lines.append(f"C{node} {node} 0 {c_bl}")
            lines += synapse(d, node, f"w{prefix}_{j}_{i}", f"wb{prefix}_{j}_{i}",
                             float(bias_n[i, j]), float(bias_p[i, j]), f"{prefix}_{i}_{j}")
            prev = node
    return lines, mems, outs


def _word_line_time(design: CoreDesign, t_in_j: float) -> float:
    """Absolute time of input j's rising edge; t ≥ 1 (T) is no spike in this phase."""
    if not float(t_in_j) < 1.0:
        return np.inf
    return design.t_accumulate_s + float(t_in_j) * design.t_phase_s


def trial_alters(design: CoreDesign, t_in: np.ndarray, bias_n: np.ndarray,
                 bias_p: np.ndarray, prefix: str = "c") -> list[str]:
    """ngspice ``alter`` commands that turn the core of :func:`core` into another trial:
    new word-line steps and new gate biases, same topology."""
    d = design
    n_out, n_in = bias_n.shape
    lines = []
    for j in range(n_in):
        t_abs = _word_line_time(d, t_in[j])
        lines.append(f"alter @Vw{prefix}_{j}[pwl] = [ "
                     f"{_pwl_points(t_abs, 0.0, d.vdd_v, d.t_edge_s, d.t_fire_s)} ]")
        lines.append(f"alter @Vwb{prefix}_{j}[pwl] = [ "
                     f"{_pwl_points(t_abs, d.vdd_v, 0.0, d.t_edge_s, d.t_fire_s)} ]")
    for i in range(n_out):
        for j in range(n_in):
            tag = f"{prefix}_{i}_{j}"
            lines.append(f"alter @Vbn_{tag}[dc] = {_fmt(float(bias_n[i, j]))}")
            lines.append(f"alter @Vbp_{tag}[dc] = {_fmt(float(bias_p[i, j]))}")
    return lines


@dataclass
class TrialDeck:
    """One core and the per-trial analyses that re-run it: ``circuit`` (element lines of
    trial 0), ``analyses`` [(commands, vectors)] for :meth:`Simulator.run`, membrane and
    detector-output node names (N_out each)."""

    circuit: str
    analyses: list[tuple[str, list[str]]]
    mem_nodes: list[str]
    out_nodes: list[str]


def trial_deck(design: CoreDesign, parasitics: Parasitics, t_in: np.ndarray,
               bias_n: np.ndarray, bias_p: np.ndarray, max_step_s: float | None = None
               ) -> TrialDeck:
    """All trials in ONE ngspice process: the netlist holds one core; trial b > 0 is set up
    by ``alter`` commands (word-line steps, gate biases) before its own transient.

    Separate transients rather than B copies of the core in one netlist: the copies would
    share one time step, so every input edge of every trial would refine the step of all of
    them (B x the time points for B x the devices); with the trimmed library, parsing (the
    reason to batch at all) costs ~0.3 s once. ``t_in`` (B, N_in) in units of T (np.inf:
    no spike); ``bias_n``/``bias_p`` (B, N_out, N_in) in V."""
    lines = ["* supplies and phase signals", *supplies(design)]
    part, mems, outs = core(design, parasitics, t_in[0], bias_n[0], bias_p[0], "c")
    lines += part
    vectors = [f"v({m})" for m in mems] + [f"v({o})" for o in outs]
    tran = transient_command(design, max_step_s)
    analyses = []
    for b in range(t_in.shape[0]):
        commands = [] if b == 0 else trial_alters(design, t_in[b], bias_n[b], bias_p[b])
        analyses.append(("\n".join([*commands, tran]), vectors))
    return TrialDeck("\n".join(lines) + "\n", analyses, mems, outs)


def transient_command(design: CoreDesign, max_step_s: float | None = None) -> str:
    """ngspice transient over the three phases. Without ``max_step_s`` ngspice's own
    truncation-error control sets the step (it refines around every input edge and around
    the detector's output transition, where spike times are read); with it, the step is
    bounded (used by the test that checks spike times against a 0.5 ns bound)."""
    if max_step_s is None:
        return f"tran 10n {_fmt(design.t_stop_s)}"
    return f"tran {_fmt(max_step_s)} {_fmt(design.t_stop_s)} 0 {_fmt(max_step_s)}"


def geometries(design: CoreDesign) -> list[tuple[float, float]]:
    """Every (W, L) in metres that the netlists of this module instantiate."""
    d = design
    um = 1e-6
    return sorted({(d.synapse_w_um * um, d.synapse_l_um * um), (1.0 * um, 0.15 * um),
                   (d.detector_p_w_um * um, d.detector_p_l_um * um),
                   (d.detector_n_w_um * um, d.detector_n_l_um * um)})
