"""The algorithm registry: what it refuses to register, and what the rest of the suite reads from
it (run options, their normalisation, the fingerprint, the tuning space, the CLI's help)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from benchmark.algorithms import (
    MomentumAlgorithm,
    NoGossip,
    Options,
    RegistryError,
    Unanalysed,
    register,
    registered,
)
from benchmark.algorithms.analysis import Analysis
from benchmark.checkpoint import config_difference, fingerprint
from benchmark.cli import parse_args
from benchmark.config import build_config, numeric_options, result_fields
from benchmark.errors import ConfigError, UserError
from benchmark.report import load_results

GOLDEN = Path(__file__).parent / "golden"


# -- registration: an incomplete algorithm never gets in ------------------------------------------
class _Opts(Options):
    step: float = Field(1.0, gt=0, description="a number")


def _algorithm(**attributes):
    """A subclass of MomentumAlgorithm with ``attributes`` (name, options_type, stability...)."""
    body = {"name": "probe", "summary": "a probe", "options_type": _Opts,
            "apply_gradients": lambda self: None, **attributes}
    return type("Probe", (MomentumAlgorithm,), body)


def _stability(analysis):
    return classmethod(lambda cls, options: analysis)


@pytest.mark.parametrize(("attributes", "message"), [
    ({}, "declare stability"),  # no stability analysis at all
    ({"stability": _stability(None)}, "returned None"),
    ({"stability": _stability(NoGossip("x")), "name": "Bad Name"}, "name 'Bad Name'"),
    ({"stability": _stability(NoGossip("x")), "name": "qgm"}, "is taken by"),
    ({"stability": _stability(NoGossip("x")), "summary": ""}, "one-line summary"),
    ({"stability": _stability(NoGossip("x")), "options_type": dict}, "options_type"),
    ({"stability": _stability(NoGossip("x")),
      "options_type": type("Clash", (Options,), {"__annotations__": {"qgm_variant": str},
                                                  "qgm_variant": "aketi"})},
     "'qgm_variant' is already an option of 'qgm'"),
    ({"stability": _stability(NoGossip("x")),
      "options_type": type("NoDefault", (Options,), {"__annotations__": {"k": int}})},
     "every option needs a default"),
])
def test_registration_refuses_what_the_suite_could_not_use(attributes, message):
    before = dict(registered())
    with pytest.raises(RegistryError, match=message):
        register(_algorithm(**attributes))
    assert dict(registered()) == before


def test_every_choice_of_the_options_needs_an_analysis():
    class Choice(Options):
        mode: Literal["a", "b"] = "a"

    def stability(cls, options: Choice) -> Analysis:
        return NoGossip("x") if options.mode == "a" else None  # forgot "b"

    with pytest.raises(RegistryError, match="mode='b'.*returned None"):
        register(_algorithm(options_type=Choice, stability=classmethod(stability)))


def test_registering_the_same_class_twice_is_a_no_op():
    before, cls = list(registered()), registered()["qgm"]
    assert register(cls) is cls and list(registered()) == before


def test_an_unanalysed_algorithm_is_registered_but_never_silently_launched(monkeypatch):
    import benchmark.algorithms.registry as registry

    monkeypatch.setattr(registry, "_ALGORITHMS", dict(registry._ALGORITHMS))  # forgotten after
    register(_algorithm(name="unchecked", stability=_stability(Unanalysed("unchecked"))))
    with pytest.raises(ConfigError) as err:
        build_config({"method": "unchecked"})
    assert str(err.value).startswith("allow_unstable: invalid value False; allowed: true for "
                                     "unchecked")
    assert "declares no stability analysis" in str(err.value)
    assert build_config({"method": "unchecked", "allow_unstable": True}).algorithm == "unchecked"


# -- the run options read the registry -----------------------------------------------------------
def test_the_run_options_are_the_registrys():
    assert {"qgm_variant", "relay_tree", "relay_norm"} <= result_fields()
    config = build_config({"method": "relaysgd", "relay_tree": "bfs", "relay_norm": "world"})
    assert config.algorithm_options.model_dump() == {"relay_tree": "bfs", "relay_norm": "world"}
    with pytest.raises(ConfigError, match="did you mean 'qgm_variant'"):
        build_config({"qgm_varient": "lin"})
    with pytest.raises(ConfigError, match="a plugin's method. name its module in the "
                                          "environment variable BENCHMARK_PLUGINS"):
        build_config({"method": "gradient-tracking"})  # no typo of a known one
    with pytest.raises(ConfigError, match="relay_norm: invalid value 'all'; allowed: one of "
                                          "counts, world"):
        build_config({"method": "dsgdm-n", "relay_norm": "all"})  # another's, still checked


def test_options_a_run_does_not_use_are_held_at_their_defaults():
    """Issue 23 point 4: another algorithm's options and another graph's cannot make two runs
    of one setting look different."""
    base = {"method": "dsgdm-n", "topology": "ring", "n_agents": 8, "seed": 0}
    variants = [{}, {"degree": 5}, {"qgm_variant": "lin"}, {"relay_tree": "bfs"},
                {"relay_norm": "world", "degree": 4}, {"torus_rows": 3}]
    dumps = [build_config({**base, **v}).model_dump() for v in variants]
    assert all(d == dumps[0] for d in dumps)
    assert dumps[0]["degree"] == 3 and dumps[0]["qgm_variant"] == "aketi"
    # where they apply, they stay
    assert build_config({**base, "method": "qgm", "qgm_variant": "lin"}).qgm_variant == "lin"
    regular = build_config({**base, "topology": "random-regular", "degree": 4})
    assert regular.degree == 4 and regular.graph().degrees.tolist() == [4] * 8
    assert build_config({**base, "topology": "torus", "n_agents": 12,
                         "torus_rows": 3}).torus_rows == 3


def test_a_report_over_runs_differing_only_in_unused_options_sees_one_run(tmp_path):
    """Three seed-0 dsgdm-n files (a golden file, as an older version wrote it: readable)
    that differ only in degree, qgm_variant and relay_tree are copies of one run."""
    golden = json.loads((GOLDEN / "dsgdm-n.json").read_text())
    for i, change in enumerate([{"degree": 4}, {"qgm_variant": "lin"}, {"relay_tree": "bfs"}]):
        run = json.loads(json.dumps(golden))
        run["config"].update(change)
        path = tmp_path / f"run{i}" / "metrics.json"
        path.parent.mkdir()
        path.write_text(json.dumps(run))
    with pytest.raises(UserError, match="is the same run .config and seed. as"):
        load_results([tmp_path])
    assert len(load_results([tmp_path], skip_invalid=True)) == 1


def test_a_finished_run_is_not_different_because_of_options_it_does_not_use():
    config = build_config({"method": "dsgdm-n", "topology": "ring", "n_agents": 8})
    saved = fingerprint(config)
    # an older file saved another algorithm's / graph's values; a newer schema has an option
    # this file never heard of (a plugin's): neither is a difference
    old = {**saved, "qgm_variant": "lin", "degree": 7}
    del old["relay_norm"]
    assert config_difference(old, config) == []
    assert config_difference({**saved, "lr": 0.5}, config) == ["lr: 0.5 -> 0.05"]
    qgm = build_config({"method": "qgm", "topology": "ring", "n_agents": 8})
    assert config_difference({**fingerprint(qgm), "qgm_variant": "lin"}, qgm) == [
        "qgm_variant: 'lin' -> 'aketi'"]


def test_the_tuning_space_and_the_cli_help_read_the_registry(capsys):
    assert {"lr", "lambda_m", "momentum"} <= set(numeric_options())
    assert "qgm_variant" not in numeric_options()  # a choice, not a number to search
    with pytest.raises(SystemExit):
        parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for name in [*registered(), "ccl-mv", "qgm_variant", "relay_tree", "relay_norm"]:
        assert f"\n  {name} " in text
    assert "relaysgd, default 'counts': counts: S / C" in text


@pytest.mark.parametrize(("space", "message"), [
    ({"step": {"low": 0.0, "high": 1.0, "log": False}}, "tuning.space.step: invalid value "
     "[0.0, 1.0]; allowed: a range within step's own limits (> 0)"),
    ({"rounds": [1.5, 4.0]}, "tuning.space.rounds: invalid value [1.5, 4.0]; allowed: "
                             "whole-number bounds (rounds is an integer option)"),
    ({"rounds": [1.0, 9.0]}, "tuning.space.rounds: invalid value [1.0, 9.0]; allowed: a "
                             "range within rounds's own limits (>= 1 and <= 8)"),
])
def test_a_tuning_range_stays_within_a_registered_option_s_own_limits(monkeypatch, space,
                                                                     message):
    """The limits come from the field that declares the option, an algorithm's options too."""
    import benchmark.algorithms.registry as registry
    from benchmark.tuning.spec import build_spec

    class Bounded(Options):
        step: float = Field(1.0, gt=0, description="a number")
        rounds: int = Field(2, ge=1, le=8, description="a count")

    monkeypatch.setattr(registry, "_ALGORITHMS", dict(registry._ALGORITHMS))  # forgotten after
    register(_algorithm(name="bounded", options_type=Bounded,
                        stability=_stability(NoGossip("x"))))
    name = next(iter(space))
    assert build_spec({"space": {name: [1.0, 2.0]}, "baseline": [name]}).space[name].high == 2.0
    with pytest.raises(ConfigError) as err:
        build_spec({"space": space, "baseline": [name]})
    assert str(err.value) == message
