"""Characterisation of one cell of the sky130 core with ngspice, and the fit of the bottom-up
(RC-Spike with reversal potentials) model to it.

Paper: Sakemi et al., arXiv 2412.09010 v1, App. A.2 (Eqs. 69-81) and App. G (Figs. 17, 20).
A transistor current source with channel-length modulation gives a synaptic current linear in
the membrane voltage V over the operating range,

    I(V) = g · (V − V_E)        (A; g in S, V_E the voltage where the fit extrapolates to 0),

so with the excursion x = V_0 − V from the post-reset level V_0 toward the threshold (the
membrane is inverted in polarity, paper Eq. 72), C dx/dt = g·(E − x) with the reversal
potential E = V_0 − V_E (V): positive for the nfet pair (it discharges the node and its current
falls as V falls), negative for the pfet pair. In normalised units (time / T, potential /
V_swing, V_swing = V_0 − V_switch):

    w = I(V_0)·T / (C·V_swing) = g·T·E / (C·V_swing),   β = V_swing / E        (paper Eq. 75-76)

and the firing-phase discharger likewise gives β_fire = V_swing / E_dis (paper Eq. 77, 81).

Four ngspice processes (models parsed once each, ~2 s in all):

1. DC sweeps of single cells: synapse current vs membrane voltage over a grid of gate biases,
   both polarities, selector on; the discharger likewise; the detector's transfer curve (DC
   V_switch: input where its output crosses V_dd/2);
2. a transient of a full column (all synapses biased off) driven by an ideal 100 nA current
   source: the effective membrane capacitance C (MIM + bit-line wire + junctions + detector
   gate) from the slope, and the post-reset level V_0 (after the reset switch lets go);
3. the discharger bias is set so that its current at V_0 is C·V_swing/T: a firing-phase slope
   dv/dt = 1 at v = 0, the normalisation of :mod:`imcsim.physics.spiking`
   (dv/dt = 1 − β_fire·v). With β_fire > 0 an unstimulated neuron then does not reach
   threshold within the phase — the paper's own criterion for its 0.554 V bias (App. G: "no
   firing occurs during the firing phase in the absence of input"). A transient lets an
   unstimulated column discharge until its detector fires and takes the membrane voltage at
   that moment as the effective threshold (:func:`_effective_threshold`: it folds the
   detector's delay and the discharge switch's injection into V_switch);
4. the switching packets: cells with their drain held by a source and their selectors
   switched on and off, per bias and polarity (off level included): the charge each edge
   draws from the membrane beyond the steady current (:func:`_switch_packets`). The
   switch-off packet (~0.45 fC for an nfet pair at w = 0.1, ~0.004 V_swing) lands when the
   inputs end at the start of the firing phase; the bottom-up model adds it there
   (:meth:`Characterisation.end_packets`). The switch-on packets are ~10x smaller and are
   reported, not modelled.

The linear fit is poorest near the threshold (paper App. G: fit range 0.43-1.36 V); the fit
range here is the model's operating range v ∈ [−0.2, 1.05] and the worst relative deviation of
the data from the fit is reported per bias.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from imcsim.errors import InputError
from imcsim.physics import spiking
from imcsim.scenarios.circuit import netlist as nl
from imcsim.scenarios.circuit.ngspice import Simulator

V_FIT_RANGE = (-0.2, 1.05)  # normalised potentials v over which I(V) is fitted
N_BIAS_GRID = (0.25, 0.70, 0.01)  # nfet synapse gate bias grid (V): start, stop, step
P_BIAS_GRID = (1.00, 1.55, 0.01)  # pfet synapse gate bias grid (V)
DIS_BIAS_GRID = (0.40, 0.75, 0.005)  # discharger gate bias grid (V)
V_SWEEP = (0.20, 1.70, 0.02)  # membrane voltage sweep (V)
I_TEST_A = 100e-9  # ideal current drawn from the test column to measure C (A)


def _grid(spec) -> np.ndarray:
    start, stop, step = spec
    return np.round(np.arange(start, stop + step / 2, step), 6)


@dataclass
class PolarityFit:
    """Linear fits I(V) = g·(V − V_E) of one synapse polarity at each gate bias."""

    bias_v: np.ndarray  # gate bias grid (V)
    g_s: np.ndarray  # slope conductance (S), > 0
    v_e_v: np.ndarray  # voltage intercept (V)
    i0_a: np.ndarray  # |current| at the post-reset level V_0 (A)
    max_rel_dev: np.ndarray  # worst |data − fit| / |fit at V_0| over the fit range
    max_rel_dev_near_threshold: np.ndarray  # same, over v ∈ [0.8, 1.05]


@dataclass
class Characterisation:
    """Everything the bottom-up model needs from the circuit (SI units)."""

    design: dict
    parasitics: dict
    n_in: int
    v0_v: float  # membrane level at the start of accumulation (after reset injection)
    v_switch_v: float  # effective threshold: membrane at the detector's output crossing
    v_switch_dc_v: float  # detector's DC switching voltage (output at V_dd/2)
    c_eff_f: float  # effective membrane capacitance of a column
    v_dis_bias_v: float  # discharger bias after trimming (unstimulated neuron fires at t = 1)
    e_dis_v: float  # discharger reversal potential E_dis = V_0 − V_E (V)
    g_dis_s: float
    q_inject_c: float  # charge a spike moves onto the membrane (C; > 0 raises V)
    nfet: PolarityFit
    pfet: PolarityFit
    sweep_v: np.ndarray = field(repr=False)  # membrane voltages of the sweeps (V)
    nfet_current_a: np.ndarray = field(repr=False)  # (n_bias, n_v), current out of the node
    pfet_current_a: np.ndarray = field(repr=False)  # (n_bias, n_v), current into the node
    dis_bias_v: np.ndarray = field(repr=False)
    dis_current_a: np.ndarray = field(repr=False)
    packet_bias_n_v: np.ndarray = field(repr=False, default=None)  # bias grid of the packets
    q_on_n_c: np.ndarray = field(repr=False, default=None)  # charge drawn when a spike starts
    q_off_n_c: np.ndarray = field(repr=False, default=None)  # ... and when it ends (C)
    packet_bias_p_v: np.ndarray = field(repr=False, default=None)
    q_on_p_c: np.ndarray = field(repr=False, default=None)
    q_off_p_c: np.ndarray = field(repr=False, default=None)
    ngspice_wall_s: float = float("nan")

    def end_packets(self, bias_n: np.ndarray, bias_p: np.ndarray) -> np.ndarray:
        """Normalised jump Δv = q_off/(C·V_swing) of each synapse when its input spike ends
        (the start of the firing phase): both of its pairs switch, the one in use and the
        one biased off, each with the packet of its bias (interpolated on the grid, whose
        ends are the off levels). Same shape as the biases."""
        q = (np.interp(bias_n, self.packet_bias_n_v, self.q_off_n_c)
             + np.interp(bias_p, self.packet_bias_p_v, self.q_off_p_c))
        return q / (self.c_eff_f * self.v_swing_v)

    @property
    def v_swing_v(self) -> float:
        return self.v0_v - self.v_switch_v

    @property
    def t_phase_s(self) -> float:
        return float(self.design["t_phase_s"])

    def normalised(self, g_s, e_rev_v):
        """(w, β) of synapses with slope ``g_s`` and reversal ``e_rev_v`` (V, excursion
        units): w = g·T·E/(C·V_swing), β = V_swing/E (paper Eqs. 75-76)."""
        return spiking.normalise_synapse(g_s, e_rev_v, c_mem=self.c_eff_f,
                                         v_swing=self.v_swing_v, t_phase=self.t_phase_s)

    @property
    def beta_fire(self) -> float:
        return self.v_swing_v / self.e_dis_v

    def e_rev_normalised(self, polarity: str, i0_a: float) -> float:
        """Normalised reversal potential E/V_swing at the bias giving |I(V_0)| = ``i0_a``."""
        fit = self.nfet if polarity == "n" else self.pfet
        order = np.argsort(fit.i0_a)
        bias = float(np.interp(np.log(i0_a), np.log(fit.i0_a[order]), fit.bias_v[order]))
        e = self.v0_v - np.interp(bias, fit.bias_v, fit.v_e_v)
        return float(e / self.v_swing_v)

    def summary(self) -> dict:
        """Scalars for reports and trace attributes (SI units, normalised E's)."""
        out = {"v0_v": self.v0_v, "v_switch_v": self.v_switch_v,
               "v_switch_dc_v": self.v_switch_dc_v, "v_swing_v": self.v_swing_v,
               "c_eff_f": self.c_eff_f, "c_mem_f": float(self.design["c_mem_f"]),
               "v_dis_bias_v": self.v_dis_bias_v, "e_dis_v": self.e_dis_v,
               "E_dis": self.e_dis_v / self.v_swing_v, "beta_fire": self.beta_fire,
               "q_inject_c": self.q_inject_c,
               "dv_inject": self.q_inject_c / (self.c_eff_f * self.v_swing_v)}
        unit_i = self.c_eff_f * self.v_swing_v / self.t_phase_s
        for pol, bias, q_on, q_off, fit in (
                ("n", self.packet_bias_n_v, self.q_on_n_c, self.q_off_n_c, self.nfet),
                ("p", self.packet_bias_p_v, self.q_on_p_c, self.q_off_p_c, self.pfet)):
            order = np.argsort(fit.i0_a)
            b_ref = float(np.interp(np.log(0.1 * unit_i), np.log(fit.i0_a[order]),
                                    fit.bias_v[order]))
            out[f"q_on_{pol}_at_w0.1_c"] = float(np.interp(b_ref, bias, q_on))
            out[f"q_off_{pol}_at_w0.1_c"] = float(np.interp(b_ref, bias, q_off))
        for pol, fit in (("n", self.nfet), ("p", self.pfet)):
            unit_i = self.c_eff_f * self.v_swing_v / self.t_phase_s  # current of |w| = 1
            for w_ref in (0.05, 0.1, 0.2):
                out[f"E_{pol}_at_w{w_ref:g}"] = self.e_rev_normalised(pol, w_ref * unit_i)
            ok = (fit.i0_a > 0.01 * unit_i) & (fit.i0_a < 0.5 * unit_i)
            out[f"fit_max_rel_dev_{pol}"] = float(fit.max_rel_dev[ok].max())
            out[f"fit_max_rel_dev_near_threshold_{pol}"] = float(
                fit.max_rel_dev_near_threshold[ok].max())
        return out

    def to_json(self) -> str:
        def conv(x):
            if isinstance(x, np.ndarray):
                return x.tolist()
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            return x
        return json.dumps(conv(asdict(self)))


def _fit_polarity(v: np.ndarray, bias: np.ndarray, current: np.ndarray, v0: float,
                  v_swing: float) -> PolarityFit:
    """Least-squares line through I(V) over the model's operating range, per bias."""
    vn = (v0 - v) / v_swing
    sel = (vn >= V_FIT_RANGE[0]) & (vn <= V_FIT_RANGE[1])
    near = (vn >= 0.8) & (vn <= V_FIT_RANGE[1])
    g, ve, i0, dev, dev_near = (np.empty(bias.size) for _ in range(5))
    for k in range(bias.size):
        slope, icpt = np.polyfit(v[sel], current[k, sel], 1)
        fit_line = slope * v + icpt
        g[k] = abs(slope)
        ve[k] = -icpt / slope
        i0[k] = abs(slope * v0 + icpt)
        dev[k] = np.max(np.abs(current[k, sel] - fit_line[sel])) / i0[k]
        dev_near[k] = np.max(np.abs(current[k, near] - fit_line[near])) / i0[k]
    return PolarityFit(bias, g, ve, i0, dev, dev_near)


def _sweep_circuit(design: nl.CoreDesign) -> str:
    """The one-cell test structures of the DC sweeps (their own sources, sharing Vdd)."""
    w, ln = design.synapse_w_um, design.synapse_l_um
    return "\n".join([
        # nfet pair: selector on (gate at V_dd), current source at Vgn; drain = membrane
        "Vmn mn 0 1.3", "Vgn gn 0 0.5",
        f"Xcnm mn gn cni 0 {nl.NFET} w={w} l={ln}",
        f"Xcns cni vdd 0 0 {nl.NFET} w={w} l={ln}",
        # pfet pair: selector on (gate at 0 V), current source at Vgp from V_dd
        "Vmp mp 0 1.3", "Vgp gp 0 1.2",
        f"Xcpm mp gp cpi vdd {nl.PFET} w={w} l={ln}",
        f"Xcps cpi 0 vdd vdd {nl.PFET} w={w} l={ln}",
        # discharger: switch on, current source at Vgd
        "Vmd md 0 1.3", "Vgd gd 0 0.55",
        f"Xcdm md gd cdi 0 {nl.NFET} w={w} l={ln}",
        f"Xcds cdi vdd 0 0 {nl.NFET} w=1 l=0.15",
        # detector alone
        "Vdin din 0 0.5",
        f"Xcdsp cdp vsense vdd vdd {nl.PFET} w={design.detector_p_w_um} "
        f"l={design.detector_p_l_um}",
        f"Xcdip dout din cdp vdd {nl.PFET} w={design.detector_p_w_um} "
        f"l={design.detector_p_l_um}",
        f"Xcdin dout din 0 0 {nl.NFET} w={design.detector_n_w_um} "
        f"l={design.detector_n_l_um}",
    ])


def _column(design, parasitics, n_in, prefix, t_spike):
    """A one-neuron column, all synapses biased off; input 0 spikes at ``t_spike`` (T)."""
    t_in = np.full(n_in, np.inf)
    t_in[0] = t_spike
    lines, mems, outs = nl.core(design, parasitics, t_in, np.zeros((1, n_in)),
                                np.full((1, n_in), design.vdd_v), prefix)
    return lines, mems[0], outs[0]


def characterise(sim: Simulator, design: nl.CoreDesign, parasitics: nl.Parasitics,
                 n_in: int) -> Characterisation:
    """Run the sweeps and transients on ``sim`` and fit the model parameters."""
    d = design
    vs, nb, pb, db = _grid(V_SWEEP), _grid(N_BIAS_GRID), _grid(P_BIAS_GRID), _grid(DIS_BIAS_GRID)
    col_c, mem_c, _ = _column(d, parasitics, n_in, "cc", np.inf)
    col_q, mem_q, _ = _column(d, parasitics, n_in, "cq", 0.5)
    t_acc = d.t_accumulate_s
    itest = (f"Itest {mem_c} 0 PWL(0 0 {t_acc + 20e-9:.9g} 0 {t_acc + 21e-9:.9g} "
             f"{I_TEST_A:.9g} {t_acc + 0.9 * d.t_phase_s:.9g} {I_TEST_A:.9g} "
             f"{t_acc + 0.9 * d.t_phase_s + 1e-9:.9g} 0)")
    # DC sweeps solve the whole netlist at every point: the cells get a process of their own
    cells = "\n".join([*nl.supplies(d), _sweep_circuit(d)]) + "\n"
    columns = "\n".join([*nl.supplies(d), *col_c, itest, *col_q]) + "\n"
    step = V_SWEEP[2]
    sweeps = [
        (f"dc Vmn {vs[0]} {vs[-1]} {step} Vgn {nb[0]} {nb[-1]} {N_BIAS_GRID[2]}", ["i(Vmn)"]),
        (f"dc Vmp {vs[0]} {vs[-1]} {step} Vgp {pb[0]} {pb[-1]} {P_BIAS_GRID[2]}", ["i(Vmp)"]),
        (f"dc Vmd {vs[0]} {vs[-1]} {step} Vgd {db[0]} {db[-1]} {DIS_BIAS_GRID[2]}",
         ["i(Vmd)"]),
        ("dc Vdin 0 1.8 0.0005", ["v(dout)"]),
    ]
    res = sim.run(cells, sweeps, title="imcsim characterisation: cells")
    wall = sim.last_wall_s
    res += sim.run(columns, [(f"tran 2n {t_acc + d.t_phase_s:.9g} 0 2n",
                              [f"v({mem_c})", f"v({mem_q})"])],
                   title="imcsim characterisation: columns")
    wall += sim.last_wall_s

    def grid2d(r, name, n_bias):
        y = r[name]
        if y.size != n_bias * vs.size:
            raise RuntimeError(f"sweep {name}: {y.size} points, expected {n_bias * vs.size}")
        return y.reshape(n_bias, vs.size)

    # ngspice's source current is the current INTO the source's + terminal from the circuit
    i_n = grid2d(res[0], "i(Vmn)", nb.size)  # nfet pair sinks current: flows into source +
    i_p = -grid2d(res[1], "i(Vmp)", pb.size)  # pfet pair sources current into the node
    i_d = grid2d(res[2], "i(Vmd)", db.size)
    vin, vout = res[3]["scale"], res[3]["v(dout)"]
    # the detector output falls as its input rises: interpolate on the first falling pair
    k = int(np.argmax(vout < d.vdd_v / 2))
    if k < 1:
        raise InputError("detector output never crosses V_dd/2: check the detector sizes")
    v_switch = float(vin[k - 1] + (vout[k - 1] - d.vdd_v / 2)
                     / (vout[k - 1] - vout[k]) * (vin[k] - vin[k - 1]))
    t, vm, vq = res[4]["scale"], res[4][f"v({mem_c})"], res[4][f"v({mem_q})"]
    v0 = float(np.interp(t_acc + 10e-9, t, vm))
    on = (t > t_acc + 0.1 * d.t_phase_s) & (t < t_acc + 0.8 * d.t_phase_s)
    slope = np.polyfit(t[on], vm[on], 1)[0]
    c_eff = I_TEST_A / abs(slope)
    t_q = t_acc + 0.5 * d.t_phase_s
    dv_q = float(np.interp(t_q + 50e-9, t, vq) - np.interp(t_q - 20e-9, t, vq))

    def discharger_bias(v_swing):
        # slope exactly 1 at the reset level: I_dis(V_0) = C·V_swing/T (the model's
        # firing phase dv/dt = 1 − β_fire·v, imcsim.physics.spiking)
        dis = _fit_polarity(vs, db, i_d, v0, v_swing)
        order = np.argsort(dis.i0_a)
        unit_i = c_eff * v_swing / d.t_phase_s
        return dis, float(np.interp(np.log(unit_i), np.log(dis.i0_a[order]), db[order]))

    _, v_dis = discharger_bias(v0 - v_switch)
    v_switch_eff, wall_fire = _effective_threshold(sim, d, parasitics, n_in, v_dis)
    wall += wall_fire
    v_swing = v0 - v_switch_eff
    nfet = _fit_polarity(vs, nb, i_n, v0, v_swing)
    pfet = _fit_polarity(vs, pb, i_p, v0, v_swing)
    dis, v_dis = discharger_bias(v_swing)
    packets = _switch_packets(sim, d, v0 - 0.5 * v_swing)
    wall += packets[-1]
    e_dis = float(v0 - np.interp(v_dis, db, dis.v_e_v))
    g_dis = float(np.interp(v_dis, db, dis.g_s))
    return Characterisation(
        design=asdict(d), parasitics=parasitics.as_dict(), n_in=n_in, v0_v=v0,
        v_switch_v=v_switch_eff, v_switch_dc_v=v_switch, c_eff_f=float(c_eff),
        v_dis_bias_v=v_dis, e_dis_v=e_dis,
        g_dis_s=g_dis, q_inject_c=float(c_eff * dv_q), nfet=nfet, pfet=pfet, sweep_v=vs,
        nfet_current_a=i_n, pfet_current_a=i_p, dis_bias_v=db, dis_current_a=i_d,
        packet_bias_n_v=packets[0], q_on_n_c=packets[1], q_off_n_c=packets[2],
        packet_bias_p_v=packets[3], q_on_p_c=packets[4], q_off_p_c=packets[5],
        ngspice_wall_s=wall)


PACKET_BIAS_STEP = 0.05  # V, bias grid of the switching-packet transient
_T_ON, _T_OFF, _T_END = 20e-9, 220e-9, 400e-9  # selector on/off edges of that transient (s)


def _packet_circuit(design: nl.CoreDesign, v_hold: float, nb: np.ndarray, pb: np.ndarray):
    """Cells whose drain is held at ``v_hold`` by a source each; their selectors switch on
    at _T_ON and off at _T_OFF."""
    d = design
    w, ln = d.synapse_w_um, d.synapse_l_um
    e = d.t_edge_s
    lines = [f"Vwp wp 0 PWL(0 0 {_T_ON} 0 {_T_ON + e} {d.vdd_v} {_T_OFF} {d.vdd_v} "
             f"{_T_OFF + e} 0)",
             f"Vwpb wpb 0 PWL(0 {d.vdd_v} {_T_ON} {d.vdd_v} {_T_ON + e} 0 {_T_OFF} 0 "
             f"{_T_OFF + e} {d.vdd_v})"]
    for k, b in enumerate(nb):
        lines += [f"Vhn{k} hn{k} 0 {v_hold:.6f}", f"Vgn{k} gn{k} 0 {b:.6f}",
                  f"Xhnm{k} hn{k} gn{k} hni{k} 0 {nl.NFET} w={w} l={ln}",
                  f"Xhns{k} hni{k} wp 0 0 {nl.NFET} w={w} l={ln}"]
    for k, b in enumerate(pb):
        lines += [f"Vhp{k} hp{k} 0 {v_hold:.6f}", f"Vgp{k} gp{k} 0 {b:.6f}",
                  f"Xhpm{k} hp{k} gp{k} hpi{k} vdd {nl.PFET} w={w} l={ln}",
                  f"Xhps{k} hpi{k} wpb vdd vdd {nl.PFET} w={w} l={ln}"]
    return lines


def _packets(t, i_src):
    """Charge drawn from the held node (C) by the switch-on and switch-off transients,
    beyond the steady current: ∫ i dt around each edge minus the steady part."""
    drawn = -i_src  # ngspice: i(V) is the current into the source's + terminal
    pre = 10e-9
    on_win = (t >= _T_ON - pre) & (t <= _T_ON + 150e-9)
    off_win = (t >= _T_OFF - pre) & (t <= _T_OFF + 150e-9)
    i_dc = float(np.interp(_T_OFF - 2e-9, t, drawn))
    q_on = np.trapezoid(drawn[on_win], t[on_win]) - i_dc * 150e-9
    q_off = np.trapezoid(drawn[off_win], t[off_win]) - i_dc * pre
    return float(q_on), float(q_off)


def _switch_packets(sim, design, v_hold):
    """Switch-on and switch-off charge packets of both synapse polarities over a bias grid
    (one transient, one process). Returns (bias_n, q_on_n, q_off_n, bias_p, q_on_p,
    q_off_p, wall time); charges are drawn FROM the membrane (C), so q > 0 moves v toward
    threshold by q/(C·V_swing)."""
    # the grids end at the off level: the pair a synapse does not use still switches
    nb = np.concatenate(([0.0], _grid((N_BIAS_GRID[0], N_BIAS_GRID[1], PACKET_BIAS_STEP))))
    pb = np.concatenate((_grid((P_BIAS_GRID[0], P_BIAS_GRID[1], PACKET_BIAS_STEP)),
                         [design.vdd_v]))
    circuit = "\n".join([*nl.supplies(design), *_packet_circuit(design, v_hold, nb, pb)])
    vectors = [f"i(Vhn{k})" for k in range(nb.size)] + [f"i(Vhp{k})" for k in range(pb.size)]
    r = sim.run(circuit + "\n", [(f"tran 1n {_T_END} 0 2n", vectors)],
                title="imcsim characterisation: switching packets")[0]
    t = r["scale"]
    qn = np.array([_packets(t, r[f"i(Vhn{k})"]) for k in range(nb.size)])
    qp = np.array([_packets(t, r[f"i(Vhp{k})"]) for k in range(pb.size)])
    return nb, qn[:, 0], qn[:, 1], pb, qp[:, 0], qp[:, 1], sim.last_wall_s


def _effective_threshold(sim, design, parasitics, n_in, v_dis) -> tuple[float, float]:
    """Membrane voltage at the moment the detector output crosses V_dd/2 while the
    discharger pulls an unstimulated column down (the firing phase, extended until it fires).

    Every neuron crosses threshold at v = 1, where the firing-phase slope is the same for all
    (1 − β_fire), so the detector's delay and the discharge switch's charge injection act as
    one fixed shift of the threshold; using this effective V_switch in V_swing puts them in
    the model. Returns (V_switch_eff, ngspice wall time)."""
    from dataclasses import replace

    d = replace(design, v_dis_bias_v=v_dis)
    lines, mem, out = _column(d, parasitics, n_in, "cf", np.inf)
    circuit = "\n".join([*nl.supplies(d), *lines]) + "\n"
    t_stop = d.t_fire_s + 1.6 * d.t_phase_s
    res = sim.run(circuit, [(f"tran 2n {t_stop:.9g} 0 2n", [f"v({mem})", f"v({out})"])],
                  title="imcsim characterisation: threshold")[0]
    t_cross = detector_crossing(res["scale"], res[f"v({out})"], d.t_fire_s, d.vdd_v)
    if not np.isfinite(t_cross):
        raise InputError(f"discharger bias {v_dis:.3f} V never fires the detector within "
                         f"1.6 T: check the design values")
    return float(np.interp(t_cross, res["scale"], res[f"v({mem})"])), sim.last_wall_s


def detector_crossing(t: np.ndarray, out: np.ndarray, t_from: float, vdd: float) -> float:
    """First time ≥ ``t_from`` at which the detector output rises through V_dd/2 (linear
    interpolation; ``t_from`` itself if it is already above; np.inf if never)."""
    half = vdd / 2
    level0 = float(np.interp(t_from, t, out))
    if level0 >= half:
        return t_from
    idx = np.flatnonzero((t[:-1] >= t_from) & (out[:-1] < half) & (out[1:] >= half))
    if idx.size == 0:
        return np.inf
    k = idx[0]
    return float(t[k] + (half - out[k]) / (out[k + 1] - out[k]) * (t[k + 1] - t[k]))


def weights_to_bias(char: Characterisation, w: np.ndarray):
    """Gate biases realising normalised weights ``w``: |w| -> target current
    I_0 = |w|·C·V_swing/T at the post-reset level (the ideal mapping of the paper's Table 2),
    inverted on the characterised I_0(V_b) curve (log-linear interpolation on the bias grid).

    Returns (bias_n, bias_p, w_realised, n_clipped): the unused pair of each synapse is
    biased off (V_b^N = 0, V_b^P = V_dd); w = 0 switches both off; a |w| above the largest
    current of the grid is clipped to it, one below the smallest is set to 0 — both counted.
    """
    w = np.asarray(w, float)
    unit_i = char.c_eff_f * char.v_swing_v / char.t_phase_s
    target = np.abs(w) * unit_i
    vdd = float(char.design["vdd_v"])
    bias_n = np.zeros_like(w)
    bias_p = np.full_like(w, vdd)
    realised = np.zeros_like(w)
    clipped = 0
    for sign, fit, off, out in ((1, char.nfet, 0.0, bias_n), (-1, char.pfet, vdd, bias_p)):
        mask = (np.sign(w) == sign) & (w != 0)
        i0 = fit.i0_a
        order = np.argsort(i0)
        lo, hi = i0[order[0]], i0[order[-1]]
        tgt = target[mask]
        too_high, too_low = tgt > hi, tgt < lo
        clipped += int(too_high.sum() + too_low.sum())
        tgt = np.clip(tgt, lo, hi)
        bias = np.interp(np.log(tgt), np.log(i0[order]), fit.bias_v[order])
        bias = np.where(too_low, off, bias)
        out[mask] = bias
        realised[mask] = np.where(too_low, 0.0, sign * tgt / unit_i)
    return bias_n, bias_p, realised, clipped


def synapse_model(char: Characterisation, bias_n: np.ndarray, bias_p: np.ndarray):
    """Bottom-up model parameters (w, β) of every synapse from its gate biases: g and V_E
    interpolated on the characterised bias grid, then
    :func:`imcsim.physics.spiking.normalise_synapse`. Synapses with both pairs off get
    w = 0, β = 0."""
    vdd = float(char.design["vdd_v"])
    w = np.zeros_like(bias_n, dtype=float)
    beta = np.zeros_like(w)
    for fit, bias, on in ((char.nfet, bias_n, bias_n > 0), (char.pfet, bias_p, bias_p < vdd)):
        g = np.interp(bias[on], fit.bias_v, fit.g_s)
        e = char.v0_v - np.interp(bias[on], fit.bias_v, fit.v_e_v)
        w[on], beta[on] = char.normalised(g, e)
    return w, beta
