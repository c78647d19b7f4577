"""Event engine (timeline, cursor, batches), refresh semantics and config round trips."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imcsim.config import (
    Scenario,
    Step,
    TimeRange,
    VerifySection,
    from_dict,
    load_scenario,
    parse_scenario,
    time_values,
    to_dict,
)
from imcsim.engine import OBSERVATIONS, Event, batches, build_timeline, step_duration
from imcsim.runner import default_scenario_path, run_scenario
from imcsim.store import Trace


def timeline_of(text: str, t_pulse: float | None = None) -> list[Event]:
    sc = parse_scenario(text).scenario
    return build_timeline(sc, sc.device.pulse_model().t_pulse if t_pulse is None else t_pulse)


def summary(events: list[Event]) -> list[tuple]:
    return [(e.t, e.step, e.seq, e.kind, e.full) for e in events]


# ----------------------------------------------------------------------------------------
# build_timeline


def test_events_in_time_order_with_file_order_tie_break():
    events = timeline_of("""
        [[timeline]]
        kind = "read"
        times = [5.0, 10.0]
        [[timeline]]
        kind = "mvm"
        times = [1.0, 5.0]
        [[timeline]]
        kind = "calibrate"
        t = 5.0
        [[timeline]]
        kind = "read"
        times = [0.5, 5.0]
        full_times = [5.0, 20.0]
    """)
    assert summary(events) == [
        (0.5, 3, 0, "read", False),
        (1.0, 1, 0, "mvm", False),
        (5.0, 0, 0, "read", False),
        (5.0, 1, 1, "mvm", False),
        (5.0, 2, 0, "calibrate", False),
        (5.0, 3, 1, "read", True),  # in times and full_times: one event, recorded in full
        (10.0, 0, 1, "read", False),
        (20.0, 3, 2, "read", True),
    ]
    assert [e.index for e in events] == list(range(len(events)))


CURSOR_TOML = """
[device.pulse]
t_pulse = 0.5

[[timeline]]        # 0: at 0, 10 pulses -> cursor 5
kind = "program"
method = "verify"
verify = { max_pulses = 10 }

[[timeline]]        # 1: reads at 5 and 7, cursor stays 5
kind = "read"
times = [0.0, 2.0]

[[timeline]]        # 2: cursor 105
kind = "wait"
duration = 100.0

[[timeline]]        # 3: at 108, cursor stays 105
kind = "calibrate"
t = 3.0

[[timeline]]        # 4: at 105, one pulse -> cursor 105.5
kind = "program"
method = "statistical"

[[timeline]]        # 5: at 105.5, as the last program (statistical) -> cursor 106
kind = "refresh"

[[timeline]]        # 6: at 106, one pulse -> cursor 106.5
kind = "reset"

[[timeline]]        # 7: at 106.5
kind = "mvm"
times = [0.0]

[[timeline]]        # 8: at 106.5, 5 pulses -> cursor 109
kind = "program"
method = "verify"
verify = { max_pulses = 5 }

[[timeline]]        # 9: at 109, as the last program (verify, 5 pulses) -> cursor 111.5
kind = "refresh"

[[timeline]]        # 10: at 111.5
kind = "read"
times = [0.0]
"""


def test_cursor_semantics():
    events = timeline_of(CURSOR_TOML)
    assert [(e.t, e.step, e.kind) for e in events] == [
        (0.0, 0, "program"),
        (5.0, 1, "read"),
        (7.0, 1, "read"),
        (105.0, 4, "program"),
        (105.5, 5, "refresh"),
        (106.0, 6, "reset"),
        (106.5, 7, "mvm"),  # same time as step 8: file order
        (106.5, 8, "program"),
        (108.0, 3, "calibrate"),  # earlier in the file, later in time
        (109.0, 9, "refresh"),
        (111.5, 10, "read"),
    ]
    assert [e.index for e in events] == list(range(len(events)))


def test_step_duration():
    verify = Step("program", method="verify", verify=VerifySection(max_pulses=7))
    statistical = Step("program", method="statistical")
    assert step_duration(verify, 2.0) == 14.0
    assert step_duration(statistical, 2.0) == 2.0
    assert step_duration(Step("reset"), 2.0) == 2.0
    assert step_duration(Step("wait", duration=3.5), 2.0) == 3.5
    assert step_duration(Step("refresh"), 2.0, verify) == 14.0
    assert step_duration(Step("refresh"), 2.0, statistical) == 2.0
    for kind in ("read", "mvm", "calibrate"):
        assert step_duration(Step(kind, times=(1.0,)), 2.0) == 0.0


def test_batches_group_observations_between_state_changes():
    events = timeline_of(CURSOR_TOML)
    groups = batches(events)
    assert [[e.kind for e in b] for b in groups] == [
        ["program"], ["read", "read"], ["program"], ["refresh"], ["reset"], ["mvm"],
        ["program"], ["calibrate"], ["refresh"], ["read"]]
    # the same with a cap of one observation per batch
    assert [len(b) for b in batches(events, 1)] == [1] * len(events)
    assert [e for b in groups for e in b] == events


def test_batches_merge_observations_across_steps_and_kinds_but_not_state_changes():
    events = timeline_of("""
        [[timeline]]
        kind = "read"
        times = [1.0, 2.0]
        [[timeline]]
        kind = "read"
        times = [1.5, 3.0]
        [[timeline]]
        kind = "mvm"
        times = [3.5, 4.0, 6.0]
        [[timeline]]
        kind = "read"
        times = [5.0, 7.0, 8.0]
        [[timeline]]
        kind = "wait"
        duration = 7.5
        [[timeline]]
        kind = "reset"
    """, t_pulse=0.25)
    groups = batches(events)
    shape = [[(e.kind, e.t) for e in b] for b in groups]
    assert shape == [
        # reads of two steps and interleaved MVMs: one batch, in time order
        [("read", 1.0), ("read", 1.5), ("read", 2.0), ("read", 3.0), ("mvm", 3.5),
         ("mvm", 4.0), ("read", 5.0), ("mvm", 6.0), ("read", 7.0)],
        [("reset", 7.5)],  # the reset splits the reads at 7 and 8
        [("read", 8.0)],
    ]
    assert [len(b) for b in batches(events, 4)] == [4, 4, 1, 1, 1]


@pytest.mark.parametrize("kind", ["program", "refresh", "reset"])
def test_batches_never_merge_across_a_state_change(kind):
    events = [Event(1.0, 0, 0, "read", index=0), Event(2.0, 1, 0, kind, index=1),
              Event(2.0, 2, 0, "read", index=2), Event(3.0, 2, 1, "read", index=3)]
    groups = batches(events)
    assert [[e.index for e in b] for b in groups] == [[0], [1], [2, 3]]
    assert batches([]) == []


# ----------------------------------------------------------------------------------------
# Property test over random timelines

_times_list = st.lists(st.floats(0.0, 1e6, allow_nan=False), max_size=4, unique=True).map(
    lambda xs: tuple(sorted(xs)))
_time_range = st.builds(
    lambda start, factor, num, spacing: TimeRange(start, start * factor, num, spacing),
    st.floats(1e-3, 1e3), st.floats(1.5, 1e4), st.integers(1, 5),
    st.sampled_from(["log", "linear"]))
_times = st.one_of(_times_list, _time_range)
_step = st.one_of(
    st.builds(lambda m, k: Step("program", method=m, verify=VerifySection(max_pulses=k)),
              st.sampled_from(["verify", "statistical"]), st.integers(1, 50)),
    st.just(Step("refresh")),
    st.just(Step("reset")),
    st.floats(1e-6, 1e6).map(lambda d: Step("wait", duration=d)),
    st.builds(lambda ts, fs: Step("read", times=ts, full_times=fs), _times,
              st.none() | _times),
    _times.map(lambda ts: Step("mvm", times=ts)),
    st.floats(0.0, 1e6).map(lambda t: Step("calibrate", t=t)),
)


def _valid(steps: list[Step]) -> tuple[Step, ...]:
    """Turn a refresh that has no earlier program into a program."""
    out, programmed = [], False
    for s in steps:
        if s.kind == "refresh" and not programmed:
            s = Step("program")
        programmed |= s.kind == "program"
        out.append(s)
    return tuple(out)


@settings(max_examples=150, deadline=None, database=None)
@given(steps=st.lists(_step, min_size=1, max_size=12).map(_valid),
       t_pulse=st.floats(1e-9, 1.0))
def test_timeline_properties(steps, t_pulse):
    events = build_timeline(Scenario(timeline=steps), t_pulse)

    times = [e.t for e in events]
    assert all(a <= b for a, b in itertools.pairwise(times))
    assert [e.index for e in events] == list(range(len(events)))
    keys = [(e.t, e.step, e.seq) for e in events]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)

    # Every event sits where its step's cursor and offset put it.
    cursor, last_program = 0.0, None
    for k, s in enumerate(steps):
        mine = [e for e in events if e.step == k]
        if s.kind in ("program", "refresh", "reset"):
            assert [(e.kind, e.t) for e in mine] == [(s.kind, pytest.approx(cursor))]
            last_program = s if s.kind == "program" else last_program
            base = last_program if s.kind == "refresh" else s
            if s.kind == "reset":
                cursor += t_pulse
            else:
                cursor += (base.verify.max_pulses if base.method == "verify" else 1) * t_pulse
        elif s.kind == "wait":
            assert mine == []
            cursor += s.duration
        elif s.kind == "calibrate":
            assert [(e.kind, e.t) for e in mine] == [("calibrate", pytest.approx(cursor + s.t))]
        else:
            plain = {float(t) for t in time_values(s.times)}
            full = {float(t) for t in time_values(s.full_times)} if s.kind == "read" else set()
            offsets = sorted(plain | full)
            mine = sorted(mine, key=lambda e: e.seq)
            assert [e.seq for e in mine] == list(range(len(offsets)))
            assert all(e.kind == s.kind for e in mine)
            assert [e.t for e in mine] == pytest.approx([cursor + t for t in offsets])
            assert [e.full for e in mine] == [t in full for t in offsets]

    for cap in (None, 1, 3):
        groups = batches(events, cap)
        assert [e for b in groups for e in b] == events
        for b in groups:
            # a batch is one state change, or observations only, at most `cap` of them
            assert len(b) == 1 or all(e.kind in OBSERVATIONS for e in b)
            assert cap is None or len(b) <= cap
        for a, b in itertools.pairwise(groups):
            # maximal: two observation batches touch only where the cap split them
            if a[0].kind in OBSERVATIONS and b[0].kind in OBSERVATIONS:
                assert cap is not None and len(a) == cap


# ----------------------------------------------------------------------------------------
# Refresh: later reads see the newly programmed conductances

REFRESH_TOML = """
[run]
name = "refresh"
seed = 5

[device.statistical]
drift_scale = 0.0          # no drift and no read noise: a read returns G_p exactly
read_noise_scale = 0.0

[array]
rows = 4
cols = 4

[record]
subset = 8

[[timeline]]
kind = "program"
method = "verify"

[[timeline]]
kind = "read"
times = [1.0]
full_times = [1.0]

[[timeline]]
kind = "wait"
duration = 1000.0

[[timeline]]
kind = "refresh"

[[timeline]]
kind = "read"
times = [1.0]
full_times = [1.0]
"""


@pytest.mark.parametrize("noise", [False, True])
def test_reads_after_refresh_see_new_conductances(noise, write_scenario, tmp_path):
    text = REFRESH_TOML if not noise else REFRESH_TOML.replace("drift_scale = 0.0", "").replace(
        "read_noise_scale = 0.0", "")
    out = run_scenario(write_scenario(text), tmp_path / "refresh.h5")
    with Trace(out) as tr:
        assert tr.status == "complete"
        kinds = [(k.decode(), int(s)) for k, s in zip(tr.events()["kind"], tr.events()["step"])]
        assert kinds == [("program", 0), ("read", 1), ("refresh", 3), ("read", 4)]

        gp = tr.series("g_programmed")
        tp = tr.series("t_programmed")
        assert gp.t.size == 2 and tp.t.size == 2
        assert tp.t[1] > 1000.0
        assert np.all(tp.data[1] > 1000.0)
        assert np.all(tp.data[0] < 1.0)
        assert not np.array_equal(gp.data[0], gp.data[1])

        reads = tr.series("conductance")
        assert reads.t.size == 2
        assert reads.t[0] < tp.t[1] < reads.t[1]
        idx = tr.device("subset_index")
        subset = tr.series("conductance_subset")
        if not noise:
            np.testing.assert_array_equal(reads.data[0], gp.data[0])
            np.testing.assert_array_equal(reads.data[1], gp.data[1])
            np.testing.assert_array_equal(subset.data[1], gp.data[1].reshape(-1)[idx])
        else:
            # One second after programming, drift and read noise are small: the second read
            # follows the refreshed conductances, not the first programming.
            new, old = gp.data[1], gp.data[0]
            err_new = np.abs(reads.data[1] - new).mean()
            err_old = np.abs(reads.data[1] - old).mean()
            assert err_new < err_old


# ----------------------------------------------------------------------------------------
# Config round trip

OVERRIDES_TOML = """
[run]
name = "overrides"
seed = 123456789
description = "every table"

[device]
model = "hermes2023"

[device.statistical]
g_max = 20e-6
prog_coeff = [1e-7, 2e-6, -3e-6]
drift_time = "shifted"
read_noise_scale = 0.5

[device.pulse]
t_pulse = 2e-6
sigma_c2c = 0.0

[array]
rows = 3
cols = 5
weight_scale = 0.5

[targets]
distribution = "normal"
std = 0.2

[record]
subset = 4
store_outputs = true

[[timeline]]
kind = "program"
method = "statistical"

[[timeline]]
kind = "read"
times = { start = 0.0, stop = 10.0, num = 3, spacing = "linear" }
full_times = [1, 2]

[[timeline]]
kind = "wait"
duration = 5

[[timeline]]
kind = "refresh"

[[timeline]]
kind = "reset"

[[timeline]]
kind = "program"
verify = { tolerance = 1e-6, max_pulses = 3, s_min = 0.5 }

[[timeline]]
kind = "mvm"
times = [0.0]
batch = 2

[[timeline]]
kind = "calibrate"
t = 0.5
batch = 3
"""


@pytest.mark.parametrize("which", ["default", "tiny", "rich", "overrides"])
def test_to_dict_round_trips(which, tiny_toml, rich_toml):
    if which == "default":
        sc = load_scenario(default_scenario_path()).scenario
    else:
        sc = parse_scenario({"tiny": tiny_toml, "rich": rich_toml,
                             "overrides": OVERRIDES_TOML}[which]).scenario
    data = to_dict(sc)
    back = from_dict(Scenario, data, "")
    assert back == sc
    assert to_dict(back) == data
    # ... also through JSON, as stored in a trace's scenario_resolved.
    assert from_dict(Scenario, json.loads(json.dumps(data)), "") == sc


def test_overrides_reach_the_models():
    sc = parse_scenario(OVERRIDES_TOML).scenario
    stat = sc.device.statistical_model()
    assert stat.kind == "hermes2023" and stat.g_max == 20e-6 and stat.shifted
    assert stat.prog_coeff == (1e-7, 2e-6, -3e-6) and stat.read_noise_scale == 0.5
    assert stat.t0 == 300.0  # from the preset
    pulse = sc.device.pulse_model()
    assert pulse.t_pulse == 2e-6 and pulse.sigma_c2c == 0.0
    assert sc.timeline[1].full_times == (1.0, 2.0)
    assert isinstance(sc.timeline[1].full_times[0], float)
    assert sc.timeline[5].verify.policy().max_pulses == 3


def test_stored_scenario_matches_the_file(tiny_trace, tiny_toml):
    with Trace(tiny_trace) as tr:
        assert from_dict(Scenario, tr.scenario, "") == parse_scenario(tiny_toml).scenario


def test_batching_never_changes_a_result(tiny_scenario, tmp_path, monkeypatch, read_datasets):
    """Observations evaluated all at once or one by one give the same bytes: every draw is
    keyed on its event, not on its batch."""
    from imcsim.runner import run_scenario
    from imcsim.scenarios.pcm_array import PCMArraySimulation

    together = run_scenario(tiny_scenario, tmp_path / "together.h5")
    original_init = PCMArraySimulation.__init__

    def one_by_one(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.max_batch = 1

    monkeypatch.setattr(PCMArraySimulation, "__init__", one_by_one)
    alone = run_scenario(tiny_scenario, tmp_path / "alone.h5")
    assert read_datasets(together) == read_datasets(alone)
