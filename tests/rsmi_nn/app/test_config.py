"""Run configs: TOML round trip, unknown keys named with the valid ones, flags over config values."""

import pytest
import tomllib

from rsmi_nn.app.cli import main
from rsmi_nn.app.config import (
    Config,
    builtin_configs,
    load_config,
    parse_bytes,
    parse_override,
)


def test_shipped_configs_load_and_round_trip():
    shipped = builtin_configs()
    assert {"default", "minilm", "tiny"} <= set(shipped)
    for name in shipped:
        cfg = load_config(name)
        again = Config.from_dict(tomllib.loads(cfg.to_toml()))
        assert again == cfg, name
    assert load_config(None) == load_config("default")
    assert load_config("minilm").source.name == "minilm"


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[flow]\nlevelz = 2\n")
    with pytest.raises(ValueError, match=r"unknown key flow\.levelz; valid keys of \[flow\] are levels, block_size"):
        load_config(bad)
    bad.write_text("[flwo]\nlevels = 2\n")
    with pytest.raises(ValueError, match="unknown section \\[flwo\\]; valid sections are source, graph, flow"):
        load_config(bad)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[flow]\nlevels = 'two'\n", "flow.levels must be of type int"),
        ("[flow]\nlevels = 0\n", "flow.levels must be >= 1"),
        ("[graph]\nmetric = 'cosine'\n", "graph.metric='cosine' is not supported"),
        ("[graph]\nmemory_budget = 'lots'\n", "memory size 'lots' is not understood"),
        ("[flow\nlevels = 2\n", "is not valid TOML"),
    ],
)
def test_bad_values_are_one_sentence_errors(tmp_path, text, match):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(bad)


def test_shipped_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    """Regression: `rsmi run tiny` from a folder holding a run directory named `tiny`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert load_config("tiny") == load_config(builtin_configs()["tiny"])


def test_missing_config_lists_the_shipped_ones(tmp_path):
    shipped = ", ".join(sorted(builtin_configs()))  # default, digits-mlp, minilm, ..., tiny, tiny-lm
    assert {"default", "digits-mlp", "minilm", "tiny", "tiny-lm"} <= set(builtin_configs())
    with pytest.raises(FileNotFoundError, match=f"shipped configs: {shipped}$"):
        load_config(tmp_path / "absent.toml")


def test_flags_override_config_values(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[flow]\nlevels = 5\nhidden = 3\n[run]\nseed = 7\n")
    rc = main(["run", str(cfg), "--out", str(tmp_path / "o"), "--levels", "2", "--set", "flow.buffer=2",
               "--seed", "3", "--print-config"])
    assert rc == 0
    resolved = Config.from_dict(tomllib.loads(capsys.readouterr().out))
    assert resolved.flow.levels == 2 and resolved.flow.hidden == 3 and resolved.flow.buffer == 2
    assert resolved.run.seed == 3
    assert not (tmp_path / "o").exists()



def test_none_round_trips_where_it_is_not_the_default(tmp_path, capsys):
    """TOML has no null: an optional option set to none (its default is a number) is written "none" and reads
    back as None; flags accept none too."""
    rc = main(["run", "--out", str(tmp_path / "o"), "--bond-ratio", "none", "--max-env", "none", "--print-config"])
    assert rc == 0
    resolved = Config.from_dict(tomllib.loads(capsys.readouterr().out))
    assert resolved.flow.bond_ratio is None and resolved.flow.max_env is None
    assert resolved.flow.min_nodes is None  # default None: omitted, reads back as the default
    again = Config.from_dict(tomllib.loads(resolved.to_toml()))
    assert again == resolved
    assert main(["run", "--out", str(tmp_path / "o"), "--bond-ratio", "abc", "--print-config"]) == 2
    assert "invalid float value: 'abc'" in capsys.readouterr().err

def test_source_flag_picks_the_shipped_config_of_that_name(tmp_path, capsys):
    assert main(["run", "--source", "minilm", "--out", str(tmp_path / "o"), "--print-config"]) == 0
    resolved = Config.from_dict(tomllib.loads(capsys.readouterr().out))
    assert resolved == load_config("minilm")


def test_parse_helpers():
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("512MB") == 512_000_000 and parse_bytes(1024) == 1024
    assert parse_override("flow.levels=3") == ("flow.levels", 3)
    assert parse_override("source.name=digits-mlp") == ("source.name", "digits-mlp")
    assert parse_override("flow.binarize=\"anneal\"") == ("flow.binarize", "anneal")


def test_checks_between_options_see_the_final_values(tmp_path, capsys):
    """Regression (review of issue 12): flags were checked one by one against the values set so far."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[flow]\nfilter = "mlp"\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--filter", "linear", "--shared",
                 "--print-config"]) == 0
    resolved = Config.from_dict(tomllib.loads(capsys.readouterr().out))
    assert resolved.flow.filter == "linear" and resolved.flow.shared


def test_common_flags_win_over_set(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "o"), "--seed", "3", "--set", "run.seed=5", "--print-config"]) == 0
    assert Config.from_dict(tomllib.loads(capsys.readouterr().out)).run.seed == 3


def test_record_needs_a_source(tmp_path, capsys):
    assert main(["record", "--out", str(tmp_path / "s")]) == 2
    assert "needs --source" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_run_made_on_another_device_is_not_refused(tmp_path):
    """Where a stage ran is not what it computed: the device is in no stage's fingerprint (a CUDA run resumes on CPU)."""
    from rsmi_nn.app.graph_stage import _graph_inputs
    from rsmi_nn.app.pipeline import _record_inputs

    cuda, cpu = Config(), Config()
    object.__setattr__(cuda.run, "device", "cuda:7")  # no CUDA here: skip the check that the device exists
    cpu.set("run.device", "cpu")
    assert _record_inputs(cuda) == _record_inputs(cpu)
    (tmp_path / "activations").mkdir()
    (tmp_path / "activations" / "manifest.json").write_text('{"shards": []}')
    assert _graph_inputs(cuda, tmp_path) == _graph_inputs(cpu, tmp_path)
