"""Nothing half-written, nothing stale: one test per kind of failure of the README's "Reliability" list.

1. a failed run leaves nothing that blocks the corrected command;
2. a re-run reuses a finished stage only when its inputs' fingerprints match and its files are whole;
3. the same command and seed give the same bytes, with the umask's permissions;
4. user mistakes end in one ``rsmi: error:`` line naming the file or value and the fix.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tomllib
import torch

from graphs import lattice_graph
from rsmi_nn.app.cli import main
from tests.rsmi_nn.app.test_pipeline import lattice_field

FAST = ["--steps", "20", "--eval-every", "10", "--levels", "2", "--quiet"]
TIME_DEPENDENT = {"timings.json", "timing.json", "report.html"}  # named in the README


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsmi: error: "), err
    return lines[0]


def _flow(samples, out, *extra) -> int:
    return main(["flow", "--samples", str(samples), "--lattice", "8", *FAST, "--out", str(out), *map(str, extra)])


def _digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in TIME_DEPENDENT}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    np.save(d / "x.npy", lattice_field(lattice_graph(8), 600, seed=0))
    np.save(d / "y.npy", lattice_field(lattice_graph(8), 600, seed=1))
    return d


@pytest.fixture(scope="module")
def base_run(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    assert _flow(samples / "x.npy", out) == 0
    return out


# --------------------------------------------------------------------------- 1. failed runs block nothing
def test_a_failed_run_leaves_no_folder_and_the_fix_runs(samples, tmp_path, capsys):
    out = tmp_path / "o"
    assert _flow(samples / "x.npy", out, "--train-batch-size", "1000") == 1
    assert "lower batch_size" in _err(capsys)
    assert not out.exists()  # checked before the first byte was written
    assert _flow(samples / "x.npy", out, "--block-size", "9") == 1
    assert "sqrt(block_size)" in _err(capsys)
    assert not out.exists()


def test_a_flow_that_fails_after_recording_resumes_with_the_fix(tmp_path, capsys):
    """The batch only fails once the activations exist; the corrected command reuses them."""
    out = tmp_path / "d"
    argv = ["run", "digits-mlp", "--out", str(out), "--levels", "1", "--steps", "20", "--eval-every", "10", "-q"]
    assert main([*argv, "--train-batch-size", "4000"]) == 1
    assert "lower batch_size" in _err(capsys)
    assert (out / "activations" / "manifest.json").is_file() and not (out / "levels").exists()
    store = hashlib.sha256((out / "activations" / "manifest.json").read_bytes()).hexdigest()
    assert main([*argv, "--train-batch-size", "128"]) == 0
    timings = json.loads((out / "timings.json").read_text())["stages"]
    assert timings["record"]["skipped"] and timings["graph"]["skipped"] and not timings["flow"]["skipped"]
    assert hashlib.sha256((out / "activations" / "manifest.json").read_bytes()).hexdigest() == store


# --------------------------------------------------------------------------- 2. stale results
def test_a_changed_input_file_is_refused(samples, base_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    x = samples / "x.npy"
    backup = tmp_path / "x.bak"
    shutil.copy(x, backup)
    config = (out / "config.toml").read_bytes()
    try:
        shutil.copy(samples / "y.npy", x)  # the same path, other content
        assert _flow(x, out, "--steps", "30") == 1
        msg = _err(capsys)
        assert "graph stage was made with another input" in msg and "delete" in msg
        assert (out / "config.toml").read_bytes() == config  # the refused command rewrote nothing
    finally:
        shutil.copy(backup, x)
    assert _flow(x, out) == 0  # the original file again: everything reused


def test_a_replaced_graph_file_is_refused(samples, tmp_path, capsys):
    g = tmp_path / "g"
    lattice_graph(8).save(g)
    argv = ["flow", "--samples", str(samples / "x.npy"), "--graph", str(g), *FAST, "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    lattice_graph(8, periodic=False).save(g)
    assert main(argv) == 1
    assert "given_graph" in _err(capsys)


def test_a_damaged_level_is_recomputed_to_the_same_bytes(samples, base_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    (out / "levels" / "001" / "filters.safetensors").unlink()
    (out / "levels" / "000" / "coarse.safetensors").write_bytes(b"truncated")
    assert _flow(samples / "x.npy", out) == 0
    assert _digests(out) == _digests(base_run)


def test_a_deleted_export_file_is_written_again(samples, base_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    (out / "feature_maps" / "level_001.safetensors").unlink()
    (out / "report.html").unlink()
    assert _flow(samples / "x.npy", out) == 0
    stages = json.loads((out / "timings.json").read_text())["stages"]
    assert stages["flow"]["skipped"] and not stages["export"]["skipped"] and not stages["report"]["skipped"]
    assert _digests(out) == _digests(base_run)


def test_levels_of_unknown_configuration_are_recomputed(samples, base_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    (out / "config.toml").unlink()
    (out / "flow_config.json").unlink()
    assert main(["flow", "--samples", str(samples / "x.npy"), "--lattice", "8", "--steps", "30", "--eval-every", "10",
                 "--levels", "2", "-q", "--out", str(out)]) == 0
    records = json.loads((out / "flow.json").read_text())
    assert [r["steps_run"] for r in records] == [30, 30]


def test_fewer_levels_leave_exactly_those_levels(samples, base_run, tmp_path):
    from rsmi_nn import load_run, run_flow

    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    x = torch.from_numpy(np.load(samples / "x.npy"))
    result = run_flow(x, lattice_graph(8), out=out, levels=1, steps=20, eval_every=10, progress=False)
    assert result.results == [None]  # level 0 was reused
    assert len(json.loads((out / "flow.json").read_text())) == 1
    assert not (out / "levels" / "001").exists()
    assert len(load_run(out).levels) == 1


# --------------------------------------------------------------------------- 3. same seed, same bytes
def test_same_seed_gives_the_same_bytes_and_the_umask_is_respected(samples, base_run, tmp_path):
    out = tmp_path / "again"
    code = ("import os, sys; os.umask(0o027); from rsmi_nn.app.cli import main; "
            f"sys.exit(main(['flow', '--samples', {str(samples / 'x.npy')!r}, '--lattice', '8', *{FAST!r}, "
            f"'--out', {str(out)!r}]))")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert _digests(out) == _digests(base_run)
    modes = {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes == {0o640}, sorted(map(oct, modes))


def test_a_path_outside_the_basic_plane_round_trips(samples, tmp_path):
    folder = tmp_path / "d😀"
    folder.mkdir()
    shutil.copy(samples / "x.npy", folder / "x😀.npy")
    out = tmp_path / "o😀"
    assert _flow(folder / "x😀.npy", out, "--levels", "1") == 0
    config = tomllib.loads((out / "config.toml").read_text(encoding="utf-8"))
    assert config["source"]["name"].endswith("x😀.npy")
    assert _flow(folder / "x😀.npy", out, "--levels", "1") == 0  # resumable


# --------------------------------------------------------------------------- 4. one clear line
def _user_files(d):
    rng = np.random.default_rng(0)
    np.save(d / "ok.npy", rng.normal(size=(200, 16)).astype(np.float32))
    (d / "empty.npy").write_bytes(b"")
    torch.save({"x": torch.nn.Linear(2, 2)}, d / "module.pt")
    (d / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (d / "fails.py").write_text("def make(**kw):\n    raise ValueError('hidden size must be even')\n")
    (d / "linear.py").write_text("import torch\ndef make(**kw):\n    torch.manual_seed(0)\n    return torch.nn.Sequential("
                                 "torch.nn.Linear(10, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))\n")
    torch.save(torch.randn(40, 12), d / "wide.pt")
    from graphs import ActivationGraph

    ring = torch.stack([torch.arange(16), (torch.arange(16) + 1) % 16])
    ActivationGraph([str(i) for i in range(16)], ring, -torch.rand(16)).save(d / "negative")


@pytest.mark.parametrize(("argv", "needle"), [
    (["flow", "--samples", "{d}/empty.npy", "--lattice", "4"], "'{d}/empty.npy' as a numeric .npy array (the file is"),
    (["flow", "--samples", "{d}/module.pt", "--lattice", "4"], "holds Python objects other than tensors"),
    (["flow", "--samples", "{d}/ok.npy", "--graph", "{d}/negative"], "negative weight"),
    (["flow", "--samples", "{d}/ok.npy", "--lattice", "5"], "did you mean --lattice 4?"),
    (["run", "--source", "python:{d}/exits.py:make", "-o", "data={d}/wide.pt"], "called sys.exit(3)"),
    (["run", "--source", "python:{d}/fails.py:make", "-o", "data={d}/wide.pt"], "make() failed: ValueError: hidden"),
    (["run", "--source", "python:{d}/linear.py:make", "-o", "data={d}/wide.pt"], "Linear taking 10 features"),
    (["run", "--source", "python:{d}/linear.py:make", "-o", "data={d}/wide.pt", "--modules", "nothing"],
     "matches no module"),
])
def test_user_mistakes_are_one_line_and_leave_nothing(tmp_path, capsys, argv, needle):
    _user_files(tmp_path)
    out = tmp_path / "o"
    assert main([*[a.format(d=tmp_path) for a in argv], "--out", str(out), "-q"]) == 1
    assert needle.format(d=tmp_path) in _err(capsys)
    assert not out.exists()


def test_graph_out_folder_and_empty_out(tmp_path, capsys):
    _user_files(tmp_path)
    (tmp_path / "gdir").mkdir()
    assert main(["graph", "--samples", str(tmp_path / "ok.npy"), "--out", str(tmp_path / "gdir") + "/", "-q"]) == 0
    assert (tmp_path / "gdir" / "graph.safetensors").is_file()
    capsys.readouterr()
    assert main(["flow", "--samples", str(tmp_path / "ok.npy"), "--lattice", "4", "--out", ""]) == 1
    assert "--out is empty" in _err(capsys)


def test_engine_refuses_impossible_input():
    from estimators.reference import gaussian_mi
    from graphs import ActivationGraph, build_graph, make_regions
    from rsmi_nn import coarse_grain

    with pytest.raises(ValueError, match="not positive definite"):
        gaussian_mi([[-1.0, 0.5], [0.5, -1.0]], [0], [1])  # its determinant is positive
    with pytest.raises(ValueError, match="at least 2"):
        build_graph(torch.randn(10, 0))
    clique = torch.combinations(torch.arange(4)).T
    two = ActivationGraph([str(i) for i in range(8)], torch.cat([clique, clique + 4], 1))
    regions = make_regions(two, torch.tensor([0] * 4 + [1] * 4), buffer=0)
    with pytest.raises(ValueError, match="no buffer or env width can help"):
        coarse_grain(torch.randn(200, 8), regions)


def test_negative_levels_are_refused(base_run):
    from rsmi_nn import load_run

    with pytest.raises(ValueError, match="level=-1 does not exist"):
        load_run(base_run).feature_maps(-1)


def test_a_model_that_cannot_be_evaluated_still_finishes_its_run(tmp_path, capsys):
    """A token model whose output is neither logits nor an embedding: `rsmi run` warns and writes the run."""
    (tmp_path / "tok.py").write_text(
        "import torch\n"
        "def make(**kw):\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Embedding(50, 16), torch.nn.Linear(16, 24), torch.nn.GELU())\n")
    ids = torch.randint(0, 50, (96, 12), generator=torch.Generator().manual_seed(0))
    from safetensors.torch import save_file

    save_file({"input_ids": ids}, str(tmp_path / "ids.safetensors"))
    out = tmp_path / "o"
    rc = main(["run", "--source", f"python:{tmp_path}/tok.py:make", "-o", f"data={tmp_path}/ids.safetensors",
               "--max-samples", "64", "--levels", "1", "--block-size", "4", "--steps", "20", "--eval-every", "10",
               "--out", str(out), "-q"])
    assert rc == 0
    assert (out / "flow.json").is_file() and (out / "report.html").is_file() and not (out / "evaluation.json").exists()
    assert "evaluation skipped: a classifier must return logits" in capsys.readouterr().err


def test_another_version_of_the_code_recomputes_every_stage(samples, base_run, tmp_path):
    """A run made by another rsmi-nn version is not reused: the same command recomputes it (same bytes here)."""
    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    prints = json.loads((out / "fingerprints.json").read_text())
    for entry in prints.values():
        entry["code"] = "0.0.1+older"
    (out / "fingerprints.json").write_text(json.dumps(prints))
    assert _flow(samples / "x.npy", out) == 0
    stages = json.loads((out / "timings.json").read_text())["stages"]
    assert not stages["graph"]["skipped"] and not stages["flow"]["skipped"]
    assert _digests(out) == _digests(base_run)


def test_another_version_of_the_code_recomputes_even_when_the_inputs_come_out_other(samples, base_run, tmp_path):
    """An older version's stages are recomputed without comparing their inputs: a recomputed stage may give
    other bytes (a model's recording differs in the last bits between runs on CPU), which must not turn the
    recomputation into a refusal."""
    out = tmp_path / "copy"
    shutil.copytree(base_run, out)
    prints = json.loads((out / "fingerprints.json").read_text())
    for entry in prints.values():
        entry["code"] = "0.0.1+older"
        for key, value in entry.items():
            if isinstance(value, str) and key != "code":
                entry[key] = value[::-1]  # every input digest of the old run reads "other"
    (out / "fingerprints.json").write_text(json.dumps(prints))
    assert _flow(samples / "x.npy", out) == 0
    assert _digests(out) == _digests(base_run)
