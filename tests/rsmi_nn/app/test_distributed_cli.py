"""`rsmi run` on several processes (issue 19): record (data parallel) → graph → 2-level flow → export → report
of the digits MLP under ``torchrun`` writes the run of one process (the store's samples, not its shard files);
a rank failing mid-level fails the command on every rank, each naming the failing rank, and the same command
then resumes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from tests.graphs.test_distributed import spawn_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["run", "tiny", "--set", "flow.levels=2", "--set", "flow.steps=12", "--set", "evaluate.enabled=false",
        "--quiet"]
# wall times; the report names its own folder; fingerprints.json holds the hash of the code's files (its inputs'
# digests are compared through the files themselves)
NOT_COMPARED = ("timings.json", "timing.json", "report.html", "fingerprints.json")


def _rsmi(out: str, fail_rank: int | None = None) -> tuple[int, str, dict | None]:
    """``rsmi run ...`` through the command's ``main`` on this rank: (exit status, stderr, rank 0's run files)."""
    from graphs.distributed import rank
    from rsmi_nn.app.cli import main

    if fail_rank is not None and rank() == fail_rank:
        import rsmi_nn.coarse_graining as cg

        train, calls = cg.train_blocks, []

        def failing(*args, **kwargs):  # this rank dies in the RSMI step of level 1
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated crash in level 1")
            return train(*args, **kwargs)

        cg.train_blocks = failing
    err = io.StringIO()
    with redirect_stderr(err):
        code = main([*ARGS, "--out", out])
    return code, err.getvalue(), _run_files(Path(out)) if rank() == 0 else None


def _run_files(root: Path) -> dict[str, bytes]:
    """Every file's bytes, but the store's shards and manifest: its samples instead (each rank writes its own
    shards, so the shard files and the manifest's shard list depend on the number of ranks)."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and p.name not in NOT_COMPARED
             and not (p.parent.name == "activations" and (p.name.startswith("shard-") or p.name == "manifest.json"))}
    if (root / "activations" / "manifest.json").is_file():
        from graphs import ActivationStore

        store = ActivationStore.open(root / "activations")
        keys = store.sample_info(range(store.num_samples))
        files["activations (samples)"] = store.to_tensor().numpy().tobytes()
        files["activations (keys)"] = b"".join(keys[k].numpy().tobytes() for k in sorted(keys))
        files["activations (manifest)"] = json.dumps({k: v for k, v in store.manifest.items() if k != "shards"},
                                                     sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: ``rsmi run`` in one (spawned) process."""
    tmp = tmp_path_factory.mktemp("single")
    ((status, result),) = spawn_ranks(_rsmi, (str(tmp / "run"),), tmp, world=1)
    assert status == "ok" and result[0] == 0, result
    return result[2]


def test_torchrun_writes_the_run_of_one_process(single, tmp_path):
    """The issue's entry point, launched as a user would: every file but wall times is the same bytes."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RSMI_DIST_TIMEOUT": "120"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "rsmi_nn.cli", *ARGS, "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _run_files(out)
    assert got.keys() == single.keys()
    assert [name for name in single if got[name] != single[name]] == []
    assert len(json.loads(got["flow.json"])) == 2


def test_a_rank_failing_mid_level_fails_every_rank_and_the_command_resumes(single, tmp_path):
    out = tmp_path / "run"
    (s0, r0), (s1, r1) = spawn_ranks(_rsmi, (str(out), 1), tmp_path)
    assert s0 == s1 == "ok", (r0, r1)
    last = [r[1].strip().splitlines()[-1] for r in (r0, r1)]  # the failing rank also logs what it was doing
    assert r1[0] == 1 and last[1].startswith("rsmi: error: [rank 1] ") and "simulated crash in level 1" in last[1]
    assert r0[0] == 1 and last[0].startswith("rsmi: error: [rank 0] rank 1 failed during the RSMI step's training")
    assert "Traceback" not in r0[1] + r1[1]
    assert (out / "levels" / "000" / "level.json").is_file() and not (out / "levels" / "001").exists()

    (s0, r0), (s1, r1) = spawn_ranks(_rsmi, (str(out),), tmp_path)  # the same command again
    assert s0 == s1 == "ok" and r0[0] == r1[0] == 0, (r0, r1)
    stages = json.loads((out / "timings.json").read_text())["stages"]
    assert stages["record"]["skipped"] and stages["graph"]["skipped"] and not stages["flow"]["skipped"]
    assert r0[2] == single  # the resumed run is the uninterrupted run of one process


def _evaluate(run_dir: str) -> dict:
    """``evaluate_run`` on this rank (every rank calls it; rank 0 writes); the result without its wall times."""
    from rsmi_nn.app.evaluation import evaluate_run

    result = evaluate_run(run_dir, held_out=600, baselines=["block-pca", "pca"], worst_case_inputs=8,
                          worst_case_starts=2, worst_case_steps=4, effect_inputs=8, device="cpu")
    result.pop("seconds")
    return result


def test_two_ranks_evaluate_like_one_process(tmp_path):
    """Issue 19, deliverable 5: the evaluation sharded by held-out batches gives the one-process evaluation.json
    (all but its wall times), and rank 0 alone writes it."""
    import shutil

    ((status, result),) = spawn_ranks(_rsmi, (str(tmp_path / "one"),), tmp_path, world=1)
    assert status == "ok" and result[0] == 0, result
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    ((s1, one),) = spawn_ranks(_evaluate, (str(tmp_path / "one"),), tmp_path, world=1)
    (s0, r0), (s1b, r1) = spawn_ranks(_evaluate, (str(tmp_path / "two"),), tmp_path)
    assert s1 == s0 == s1b == "ok", (one, r0, r1)
    assert json.dumps(r0, sort_keys=True) == json.dumps(one, sort_keys=True) == json.dumps(r1, sort_keys=True)
    written = [json.loads((tmp_path / d / "evaluation.json").read_text()) for d in ("one", "two")]
    assert [{k: v for k, v in w.items() if k != "seconds"} for w in written] == [one, one]
    assert len(one["levels"]) == 2 and one["held_out"]["num_inputs"] == 600  # two batches of 512: one a rank
