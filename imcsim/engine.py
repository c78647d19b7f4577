"""Discrete-event engine: a scenario's timeline -> ordered events -> batched kernel calls.

The whole timeline is known before the run starts (scenario times do not depend on random
outcomes), so it is built once and sorted by (time, step, position in step): simultaneous
events keep file order, as in SimPy's (time, priority, sequence) queue. Consecutive
observations (reads, MVMs, calibrations) that no state-changing event separates are handed
to the simulation as one batch, so one kernel call evaluates the closed-form drift of every
device at all their times; the simulation then handles them one by one in time order.
Nothing steps through idle time: a year of waiting costs one subtraction. Random draws are
keyed on each event's index, so how events are batched never changes a result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from imcsim.config import Scenario, time_values

STATE_CHANGING = ("program", "refresh", "reset")
OBSERVATIONS = ("read", "mvm", "calibrate")


@dataclass(frozen=True, order=True)
class Event:
    """One event: absolute time ``t`` (s), timeline ``step`` index, ``seq`` within the step.

    ``index`` is the event's position in time order; kernels key their random draws on it.
    """

    t: float
    step: int
    seq: int
    kind: str = field(compare=False)
    full: bool = field(default=False, compare=False)
    index: int = field(default=-1, compare=False)


def step_duration(step, t_pulse: float, last_program=None) -> float:
    """Time a state-changing step occupies on the timeline (s)."""
    if step.kind == "wait":
        return step.duration
    if step.kind == "refresh":
        step = last_program
    if step.kind == "program":
        if step.method == "gdp":
            return (step.gdp.iterations + 1) * step.gdp.t_iteration
        return (step.verify.max_pulses if step.method == "verify" else 1) * t_pulse
    if step.kind == "reset":
        return t_pulse
    return 0.0


def build_timeline(scenario: Scenario, t_pulse: float) -> list[Event]:
    """All events of a scenario in time order, each with its ``index``."""
    cursor = 0.0
    events: list[Event] = []
    last_program = None
    for k, step in enumerate(scenario.timeline):
        if step.kind in STATE_CHANGING:
            events.append(Event(cursor, k, 0, step.kind))
            cursor += step_duration(step, t_pulse, last_program)
            if step.kind == "program":
                last_program = step
        elif step.kind == "wait":
            cursor += step.duration
        elif step.kind == "calibrate":
            events.append(Event(cursor + step.t, k, 0, "calibrate"))
        else:
            times = {float(t): False for t in time_values(step.times)}
            if step.kind == "read":
                times.update({float(t): True for t in time_values(step.full_times)})
            for seq, t in enumerate(sorted(times)):
                events.append(Event(cursor + t, k, seq, step.kind, full=times[t]))
    events.sort()
    return [Event(e.t, e.step, e.seq, e.kind, e.full, i) for i, e in enumerate(events)]


def batches(events: list[Event], max_batch: int | None = None) -> list[list[Event]]:
    """Group consecutive observations, at most ``max_batch`` per group; every state-changing
    event stands alone."""
    out: list[list[Event]] = []
    for e in events:
        if (out and e.kind in OBSERVATIONS and out[-1][0].kind in OBSERVATIONS
                and (max_batch is None or len(out[-1]) < max_batch)):
            out[-1].append(e)
        else:
            out.append([e])
    return out


class Simulation(Protocol):
    """What the engine dispatches to: ``handle`` takes one batch; ``max_batch`` bounds the
    observations evaluated together (memory)."""

    max_batch: int | None

    def handle(self, batch: list[Event]) -> None: ...


def run_events(sim: Simulation, events: list[Event], progress=None) -> None:
    """Dispatch every batch in time order; ``progress(n)`` is told of each n events done."""
    for batch in batches(events, sim.max_batch):
        sim.handle(batch)
        if progress is not None:
            progress(len(batch))
