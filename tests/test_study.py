"""Study files: variants and cross products of one scenario, run into one trace."""

import numpy as np
import pytest
from click.testing import CliRunner

from imcsim.cli import main
from imcsim.config import apply_overrides, parse_scenario
from imcsim.errors import InputError
from imcsim.runner import run_scenario
from imcsim.store import Trace

STUDY = """
[run]
name = "mini"
seed = 4
[array]
rows = 16
cols = 12
[record]
subset = 8
[periphery]
dac_bits = 8
adc_bits = 8
adc_full_scale = 2.5e-5
[[timeline]]
kind = "program"
verify = { differential = true }
gdp = { iterations = 12, batch = 64 }
[[timeline]]
kind = "mvm"
times = [1.0, 3600.0]
[[variant]]
name = "verify"
[[variant]]
name = "gdp"
"timeline[0].method" = "gdp"
[study]
cross = { "periphery.adc_bits" = [5, 8] }
"""


def test_variants_cross_with_study_values_in_order():
    loaded = parse_scenario(STUDY)
    runs = loaded.runs()
    assert [name for name, _, _ in runs] == ["verify-adc_bits=5", "verify-adc_bits=8",
                                             "gdp-adc_bits=5", "gdp-adc_bits=8"]
    by_name = {name: sc for name, _, sc in runs}
    assert by_name["gdp-adc_bits=5"].timeline[0].method == "gdp"
    assert by_name["gdp-adc_bits=5"].periphery.adc_bits == 5
    assert by_name["verify-adc_bits=8"].timeline[0].method == "verify"
    # the base scenario itself is untouched
    assert loaded.scenario.periphery.adc_bits == 8


def test_apply_overrides_creates_tables_and_rejects_bad_indices():
    data = {"timeline": [{"kind": "program"}]}
    out = apply_overrides(data, {"timeline[0].gdp.lr": 0.5, "array.rows": 4})
    assert out == {"timeline": [{"kind": "program", "gdp": {"lr": 0.5}}], "array": {"rows": 4}}
    assert data == {"timeline": [{"kind": "program"}]}  # a copy
    with pytest.raises(InputError, match="out of range"):
        apply_overrides(data, {"timeline[2].kind": "read"})
    with pytest.raises(InputError, match="bad index"):
        apply_overrides(data, {"timeline[x].kind": "read"})


@pytest.mark.parametrize("change, needle", [
    (('"timeline[0].method" = "gdp"', '"timeline[0].methd" = "gdp"'),
     "variant[1] (gdp-adc_bits=5): timeline[0].methd: unknown key"),
    (('cross = {', 'crosss = {'), "study.crosss: unknown key"),
    (('[5, 8]', '[]'), "expected a non-empty list"),
    (('name = "gdp"', 'name = "verify"'), "used twice"),
    (('name = "gdp"', 'name = "a/b"'), "variant[1].name"),
])
def test_bad_studies_name_the_variant_and_field(change, needle, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.replace(*change))
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(tmp_path / "o.h5")])
    assert result.exit_code == 2
    assert needle in result.stderr
    assert not (tmp_path / "o.h5").exists()


@pytest.fixture(scope="module")
def study_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "study.h5"
    return run_scenario(parse_scenario(STUDY), out)


def test_study_runs_are_complete_and_share_devices_and_targets(study_trace):
    with Trace(study_trace, run="verify-adc_bits=5") as first:
        runs = first.runs()
        dg0 = first.device("dg0")
        w = first.device("w_target")
    assert len(runs) == 4
    for name in runs:
        with Trace(study_trace, run=name) as tr:
            assert tr.status == "complete"
            assert tr.attrs["run_name"] == name
            # same seed: the same device instances and targets, programmed differently
            assert np.array_equal(tr.device("dg0"), dg0)
            assert np.array_equal(tr.device("w_target"), w)
            assert tr.series("mvm_error").t.size == 2
    with Trace(study_trace, run="gdp-adc_bits=8") as tr:
        assert tr.series("gdp_mvm_error").t.size == 12
    with pytest.raises(InputError, match="holds 4 runs"):
        Trace(study_trace)
    with pytest.raises(InputError, match="no run 'nope'"):
        Trace(study_trace, run="nope")


def test_study_runs_equal_their_stand_alone_scenarios(study_trace, tmp_path, read_datasets):
    """A run inside a study gives the same datasets as the same scenario run on its own."""
    name, _, scenario = parse_scenario(STUDY).runs()[2]
    from imcsim.config import LoadedScenario

    alone = run_scenario(LoadedScenario(scenario, "", None), tmp_path / "alone.h5")
    inside = {k[len(f"runs/{name}/"):]: v for k, v in read_datasets(study_trace).items()
              if k.startswith(f"runs/{name}/")}
    assert inside == read_datasets(alone)


def test_info_prints_one_line_per_run(study_trace):
    result = CliRunner().invoke(main, ["info", str(study_trace)])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert "study 'mini'" in lines[0] and "runs: 4" in lines[0]
    for name in ("verify-adc_bits=5", "gdp-adc_bits=8"):
        assert any(line.split()[:2] == [name, "complete"] for line in lines)
    one = CliRunner().invoke(main, ["info", str(study_trace), "--run", "gdp-adc_bits=5"])
    assert one.exit_code == 0 and "series/gdp_mvm_error/data" in one.output


def test_programming_analysis_reads_every_run(study_trace, tmp_path):
    from imcsim.analysis.programming import comparison_rows, load_study, programming_figure

    runs = load_study(study_trace)
    assert [(r.method, r.adc_bits) for r in runs] == [
        ("verify, hi-res read", 5), ("verify, hi-res read", 8), ("gdp", 5), ("gdp", 8)]
    assert all(r.gdp for r in runs if r.method == "gdp")
    assert not any(r.gdp for r in runs if r.method != "gdp")
    rows = comparison_rows(runs, times=(1.0, 3600.0))
    for row, run in zip(rows, runs):
        assert row["error@1s"] == run.mvm_error[0]
        assert row["error@3600s"] == run.mvm_error[1]
    # A coarser ADC cannot make the same programmed tile more accurate here.
    by = {(r.method, r.adc_bits): r.error_at(1.0) for r in runs}
    assert by[("verify, hi-res read", 5)] > by[("verify, hi-res read", 8)]
    out = programming_figure(study_trace, tmp_path / "p.png")
    assert out.stat().st_size > 10_000
    cli = CliRunner().invoke(main, ["plot", str(study_trace), "-o", str(tmp_path / "q.png")])
    assert cli.exit_code == 0 and (tmp_path / "q.png").exists()


def test_every_shipped_scenario_validates():
    from pathlib import Path

    from imcsim.config import load_scenario
    from imcsim.sweep import load_sweep

    folder = Path(__file__).resolve().parent.parent / "scenarios"
    files = sorted(folder.glob("*.toml"))
    assert len(files) >= 4
    for path in files:
        if "\n[sweep]" in path.read_text():
            assert load_sweep(path).runs, path  # a sweep file: every run validated
            continue
        loaded = load_scenario(path)
        assert loaded.runs(), path
    gdp = load_scenario(folder / "gdp_vs_iterative.toml")
    assert len(gdp.runs()) == 30
    methods = {sc.timeline[0].method for _, _, sc in gdp.runs()}
    assert methods == {"gdp", "verify"}
    # equal pulse caps for both methods in every run
    assert {sc.timeline[0].gdp.max_pulses for _, _, sc in gdp.runs()} == \
        {sc.timeline[0].verify.max_pulses for _, _, sc in gdp.runs()} == {40}
