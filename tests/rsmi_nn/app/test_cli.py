"""The ``rsmi`` command: user mistakes give one line on stderr and a non-zero exit, never a traceback.

The end-to-end runs of the real pipeline are in ``test_pipeline.py``.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsmi_nn import __version__
from rsmi_nn.app.cli import build_parser, main
from tests.rsmi_nn.fake_run import make_fake_run


def rsmi_command() -> list[str]:
    """The installed console script (``.venv/bin/rsmi``), else ``python -m rsmi_nn.app.cli``."""
    script = Path(sys.executable).with_name("rsmi")
    if script.is_file():
        return [str(script)]
    found = shutil.which("rsmi")
    return [found] if found else [sys.executable, "-m", "rsmi_nn.app.cli"]


def run_rsmi(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*rsmi_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rsmi: error: "), lines[0]
    assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------- through the real script
def test_user_mistakes_through_the_console_script(tmp_path):
    """Unknown model, missing file, bad config key, wrong sample shape: one line, exit 1, nothing written."""
    out = tmp_path / "out"
    proc = run_rsmi("run", "--source", "no-such-model", "--out", out)
    assert_one_line_error(proc, "unknown source 'no-such-model'")
    assert proc.returncode == 1

    proc = run_rsmi("flow", "--samples", tmp_path / "missing.npy", "--lattice", 8, "--out", out)
    assert_one_line_error(proc, "does not exist")

    bad = tmp_path / "bad.toml"
    bad.write_text("[flow]\nlevelz = 2\n")
    proc = run_rsmi("run", bad, "--out", out)
    assert_one_line_error(proc, "unknown key flow.levelz")

    x = np.random.default_rng(0).normal(size=(200, 60)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = run_rsmi("flow", "--samples", tmp_path / "x.npy", "--lattice", 8, "--levels", 2, "--out", out)
    assert_one_line_error(proc, "have 60 columns but --lattice 8 needs L*L = 64")
    assert not out.exists(), "a failed command must not leave a half-written run directory"


def test_help_and_version_through_the_console_script():
    proc = run_rsmi("--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = run_rsmi("frobnicate")
    assert_one_line_error(proc, "invalid choice")
    assert proc.returncode == 2


# --------------------------------------------------------------------------- in-process
def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsmi: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("setup", "argv", "needle"),
    [
        ("3d", ["flow", "--samples", "{d}/x3.npy", "--lattice", "4", "--out", "{d}/o"], "expected a 2-D"),
        ("nan", ["flow", "--samples", "{d}/nan.npy", "--lattice", "4", "--out", "{d}/o"], "NaN/Inf"),
        ("multi", ["flow", "--samples", "{d}/two.safetensors", "--lattice", "4", "--out", "{d}/o"], "--key"),
        (None, ["flow", "--samples", "{d}/x.txt", "--lattice", "4", "--out", "{d}/o"], "does not exist"),
        ("txt", ["flow", "--samples", "{d}/x.txt", "--lattice", "4", "--out", "{d}/o"], "has suffix '.txt'"),
        ("ok", ["flow", "--samples", "{d}/ok.npy", "--graph", "{d}/nograph", "--out", "{d}/o"], "does not exist"),
        ("ok", ["flow", "--samples", "{d}/ok.npy", "--out", "{d}/o"], "--lattice L or --graph"),
        ("ok", ["flow", "--samples", "{d}/ok.npy", "--open", "--graph", "g", "--out", "{d}/o"], "--open only"),
        ("ok", ["flow", "--samples", "{d}/ok.npy", "--lattice", "4", "--levels", "0", "--out", "{d}/o"],
         "flow.levels must be >= 1"),
        ("ok", ["flow", "--samples", "{d}/ok.npy", "--lattice", "4", "--block-size", "16", "--out", "{d}/o"],
         "too few for flow.block_size=16"),
        (None, ["export", "{d}/norun"], "does not exist"),
        (None, ["report", "{d}/norun"], "does not exist"),
        (None, ["run", "--out", "{d}/o", "--set", "flow.levels"], "section.key=value"),
        (None, ["run", "--out", "{d}/o", "--set", "nope.levels=2"], "unknown section 'nope'"),
        (None, ["run", "--out", "{d}/o", "--memory-budget", "much"], "memory size 'much'"),
        (None, ["graph", "--store", "{d}/nostore", "--out", "{d}/g"], "does not exist"),
        (None, ["run", "--out", "{d}/o", "--device", "gpu"], "is not a device"),
        (None, ["run", "--out", "{d}/o", "--source", "python:{d}/nomodel.py:make", "-o", "data={d}/x.npy"], ""),
    ],
)
def test_user_mistakes_in_process(tmp_path, capsys, setup, argv, needle):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    if setup == "3d":
        np.save(tmp_path / "x3.npy", rng.normal(size=(10, 4, 4)).astype(np.float32))
    elif setup == "nan":
        x = rng.normal(size=(50, 16)).astype(np.float32)
        x[3, 2] = np.nan
        np.save(tmp_path / "nan.npy", x)
    elif setup == "multi":
        save_file({"a": rng.normal(size=(50, 16)).astype(np.float32),
                   "b": rng.normal(size=(50, 16)).astype(np.float32)}, str(tmp_path / "two.safetensors"))
    elif setup == "txt":
        (tmp_path / "x.txt").write_text("1 2 3\n")
    elif setup == "ok":
        np.save(tmp_path / "ok.npy", rng.normal(size=(50, 16)).astype(np.float32))
    argv = [a.format(d=tmp_path) for a in argv]
    rc = main(argv)
    assert rc != 0
    assert needle in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: rsmi" in capsys.readouterr().out


def test_binarize_flag_takes_none_against_the_auto_default():
    """``--binarize none`` forces a real-valued H on two-valued data (the default, auto, would binarise it)."""
    from rsmi_nn.app.cli_parser import apply_flags
    from rsmi_nn.app.config import load_config

    for flag, want in (("none", None), ("auto", "auto"), ("anneal", "anneal")):
        cfg = load_config()
        apply_flags(cfg, build_parser().parse_args(["run", "--out", "unused", "--binarize", flag]))
        assert cfg.flow.binarize == want, flag


def test_every_flag_has_help():
    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subs.choices) == {"run", "record", "graph", "flow", "export", "evaluate", "report", "compare", "encode"}
    for name, sub in subs.choices.items():
        for action in sub._actions:
            assert action.help, f"rsmi {name} {action.option_strings or action.dest} has no help text"
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"--device", "--seed", "--quiet"} <= flags, name


def test_export_and_report_commands_on_a_run(tmp_path, capsys):
    root = tmp_path / "run"
    make_fake_run(root)
    assert main(["export", str(root), "--quiet", "--top-units", "3"]) == 0
    assert (root / "feature_maps" / "index.json").is_file()
    assert main(["report", str(root), "--quiet"]) == 0
    assert (root / "report.html").is_file()
    assert "report:" in capsys.readouterr().out
