"""The benchmarks' same-run baselines: the machine record and the code before issue 20 (``bench_vs_rsmine``)."""

import subprocess
from pathlib import Path

import pytest

from benchmarks import cpu_model
from benchmarks.bench_vs_rsmine import BEFORE_COMMIT, REFERENCE_PROTOCOL, before_tree, protocol_run, square_regions

ROOT = Path(__file__).resolve().parent.parent


def _has_commit(commit: str) -> bool:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True).returncode == 0
    except OSError:
        return False


def test_cpu_model_names_the_processor():
    info = cpu_model()
    if not Path("/proc/cpuinfo").exists():
        assert info is None
        return
    assert info["model"]
    assert set(info["extensions"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}


@pytest.mark.skipif(not _has_commit(BEFORE_COMMIT), reason=f"this clone's history lacks {BEFORE_COMMIT}")
def test_before_tree_holds_the_code_before_issue_20(tmp_path):
    tree = before_tree(tmp_path / "before")
    assert (tree / "rsmi_nn" / "app" / "cli.py").is_file()
    assert not (tree / "benchmarks" / "bench_vs_rsmine.py").exists()  # added by the work it is the baseline of


def test_before_tree_says_why_it_has_nothing(tmp_path, monkeypatch, capsys):
    import benchmarks.bench_vs_rsmine as bench

    monkeypatch.setattr(bench, "BEFORE_COMMIT", "0" * 40)
    assert bench.before_tree(tmp_path / "before") is None
    assert "no same-run baseline" in capsys.readouterr().out
    assert not (tmp_path / "before").exists()


def test_protocol_run_trains_one_block_for_the_whole_budget():
    from experiments.ising_sampler import sample_ising

    x = sample_ising(8, 2.0, 1500, seed=0)
    res = protocol_run(x, square_regions(8), seed=0)
    assert res.filters.shape[0] == 1
    assert res.info["steps_run"] == REFERENCE_PROTOCOL["steps"]
    assert res.info["critic_refit_steps"] == 0


def test_the_shared_step_over_seeds_reads_each_seed_and_the_uniform_filter():
    import argparse

    from benchmarks.shared_seeds import _option, shared_over_seeds

    rows = shared_over_seeds([0, 1], 12, 2.269185, 3000, steps=50, refit_critic=False)
    assert [r["seed"] for r in rows] == [0, 1] and rows[0]["steps"] == 50 and rows[0]["refit_steps"] == 0
    for r in rows:
        assert 0.1 < r["probe"] < 0.7 and 0.1 < r["uniform_probe"] < 0.7  # one binary H of a 2×2 block near T_c
        assert len(r["filter_block0"]) == 4
    assert rows[0]["uniform_probe"] != rows[1]["uniform_probe"]  # each seed draws its own fresh samples
    assert _option("eval_every=50") == ("eval_every", 50)
    with pytest.raises(argparse.ArgumentTypeError, match="name=value"):
        _option("eval_every")
