"""Export → load_run round trip on a hand-built two-level run (exact values, no training)."""

import json

import networkx as nx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.sparse import coo_matrix

from rsmi_nn import export_run, load_run
from tests.rsmi_nn.fake_run import make_fake_run


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "run"
    truth = make_fake_run(root)
    return root, truth


def _hand_local(level_truth) -> torch.Tensor:
    """W_l[visible[j,i], j*h+c] = filters[j,i,c] / std[visible[j,i]], with explicit loops."""
    filters, std, reg = level_truth["filters"].double(), level_truth["std"].double(), level_truth["regions"]
    J, V, h = filters.shape
    w = torch.zeros(std.numel(), J * h, dtype=torch.float64)
    for j in range(J):
        for i in range(V):
            if reg["visible_mask"][j, i]:
                u = int(reg["visible"][j, i])
                for c in range(h):
                    w[u, j * h + c] = filters[j, i, c] / std[u]
    return w


def test_feature_maps_equal_hand_composition(fake):
    root, truth = fake
    run = load_run(root)
    assert len(run.levels) == 2 and run.flow[1]["level"] == 1
    w0, w1 = _hand_local(truth["levels"][0]), _hand_local(truth["levels"][1])
    m0, m1 = run.feature_maps(0), run.feature_maps(1)
    assert m0.shape == (14, 4) and m1.shape == (14, 4)
    torch.testing.assert_close(run.levels[0].feature_map.double(), w0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m0.double(), w0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(m1.double(), w0 @ w1, rtol=1e-5, atol=1e-6)


def test_composed_map_reproduces_coarse_samples(fake):
    """x @ M_l equals the level-l coarse variables up to their constant offset (the linear part)."""
    root, truth = fake
    run = load_run(root)
    x = truth["x"].double()
    for level in range(2):
        pred = x @ run.feature_maps(level).double()
        coarse = truth["levels"][level]["coarse"].double()
        torch.testing.assert_close(pred - pred.mean(0), coarse - coarse.mean(0), rtol=1e-5, atol=1e-5)


def test_export_files_round_trip(fake):
    root, _ = fake
    index_path = export_run(root, top_units=3)
    index = json.loads(index_path.read_text())
    assert index["num_levels"] == 2 and index["num_units_level0"] == 14
    run = load_run(root)
    for level in range(2):
        tensors = load_file(str(root / index["levels"][level]["feature_map"]))
        shape = tuple(tensors["composed_shape"].tolist())
        rows, cols = tensors["composed_indices"].numpy()
        dense = coo_matrix((tensors["composed_values"].numpy(), (rows, cols)), shape=shape).toarray()
        torch.testing.assert_close(torch.from_numpy(dense), run.feature_maps(level))
        side = json.loads((root / index["levels"][level]["sidecar"]).read_text())
        assert side["unit_names"] == run.levels[level].names
        assert side["blocks"] == run.levels[level].blocks.tolist()
        assert len(side["variables"]) == run.levels[level].num_coarse
        mi = run.levels[level].mi
        for v in side["variables"]:
            assert v["mi"] == pytest.approx(float(mi[v["block"]]))
            weights = [abs(u["weight"]) for u in v["top_units"]]
            assert weights == sorted(weights, reverse=True) and len(weights) <= 3
            col = run.feature_maps(level)[:, v["variable"]].abs()
            assert weights[0] == pytest.approx(float(col.max()), rel=1e-6)
        assert side["correlation_length"] == run.flow[level]["correlation_length"]
        # graphs: PyG tensors and GraphML with block labels
        g = load_file(str(root / index["levels"][level]["graph"]))
        assert torch.equal(g["edge_index"], run.levels[level].graph.edge_index)
        G = nx.read_graphml(root / index["levels"][level]["graphml"])
        assert G.number_of_nodes() == run.levels[level].num_units
        blocks = sorted((int(k), d["block"]) for k, d in G.nodes(data=True))
        assert [b for _, b in blocks] == run.levels[level].blocks.tolist()


def test_top_examples_from_a_store(tmp_path):
    """With an activation store, every coarse variable gets its top-k samples, best first."""
    from graphs import record_activations

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(9, 14))
    inputs = torch.randn(60, 9)
    root = tmp_path / "run"
    store = record_activations(model, inputs, ["0"], root / "activations", batch_size=16, device="cpu",
                               input_shape=(3, 3), progress=False)
    truth = make_fake_run(root, x=store.to_tensor())
    export_run(root, top_examples=5)
    run = load_run(root)
    ex = run.examples(0)
    assert ex is not None and len(ex["variables"]) == 4
    coarse = truth["levels"][0]["coarse"]
    for v, items in enumerate(ex["variables"]):
        assert len(items) == 5
        values = [it["value"] for it in items]
        assert values == sorted(values, reverse=True)
        assert values[0] == pytest.approx(float(coarse[:, v].max()), rel=1e-5)
        top = items[0]
        np.testing.assert_allclose(np.asarray(top["input"]).reshape(-1), inputs[top["sample"]].numpy(), rtol=1e-6)
    assert (root / "examples" / "level_000.png").is_file()


def test_load_run_errors(tmp_path, fake):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="flow.json"):
        load_run(tmp_path / "empty")
    root, _ = fake
    (root / "levels" / "001" / "level.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_run(root)
    run_levels = json.loads((root / "flow.json").read_text())[:1]
    (root / "flow.json").write_text(json.dumps(run_levels))
    run = load_run(root)  # the finished prefix still loads
    assert len(run.levels) == 1
    with pytest.raises(ValueError, match="levels 0..0"):
        run.feature_maps(1)


def _tiny_text_store(tmp_path):
    """A per-token store of a tiny BERT (2 layers x 7 intermediate units = 14 units) on three texts."""
    transformers = pytest.importorskip("transformers")
    from graphs import record_activations

    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "far", "away", "and", "slept"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=7, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    texts = ["the cat sat on the mat", "a dog ran far away and the cat slept on the mat", "the dog ran"]
    root = tmp_path / "run"
    store = record_activations(model, texts, "encoder.layer.*.intermediate", root / "activations", batch_size=2,
                               tokenizer=tok, device="cpu", progress=False)
    return root, store, texts


def test_text_examples_carry_every_token_of_their_context(tmp_path):
    """Top and bottom examples of text: the variable's value on each context token equals the coarse sample of
    that token, the tokens read as the text, and the focus token is the example's own."""
    root, store, texts = _tiny_text_store(tmp_path)
    truth = make_fake_run(root, x=store.to_tensor())
    export_run(root, top_examples=3)
    info = store.sample_info(torch.arange(store.num_samples))
    for level in range(2):
        ex = load_run(root).examples(level)
        coarse = truth["levels"][level]["coarse"]
        assert len(ex["variables"]) == len(ex["bottom"]) == coarse.shape[1]
        for v in range(coarse.shape[1]):
            lows = [it["value"] for it in ex["bottom"][v]]
            assert lows == sorted(lows) and lows[0] == pytest.approx(float(coarse[:, v].min()), rel=1e-5)
            for it in ex["variables"][v] + ex["bottom"][v]:
                j, first = it["input_index"], it["context_start"]
                rows = torch.nonzero(info["input_index"] == j).flatten()
                rows = rows[torch.argsort(info["token_position"][rows])]
                window = rows[first : first + len(it["context_tokens"])]
                assert int(window[it["context_focus"]]) == it["sample"]
                np.testing.assert_allclose(it["context_values"], coarse[window, v].numpy(), rtol=2e-3, atol=1e-6)
                words = "".join(t for t in it["context_tokens"] if not t.startswith("["))
                assert words.strip() in texts[j]
                assert it["context_tokens"][it["context_focus"]].strip() in (it["token"], f"{it['token']}")
    side = json.loads((root / "feature_maps" / "level_000.json").read_text())
    for var in side["variables"]:  # histograms count every sample; level-0 children are the block's units
        assert sum(var["histogram"]["counts"]) == store.num_samples
        assert var["children"] == [u for u, b in enumerate(side["blocks"]) if b == var["block"]]
    up = json.loads((root / "feature_maps" / "level_001.json").read_text())
    for var in side["variables"]:  # the parent's block holds this variable as a unit
        (p,) = {q // up["hidden"] for q in var["parents"]}
        assert up["blocks"][var["variable"]] == p


def test_neuronpedia_layout(tmp_path):
    from rsmi_nn.app.export_neuronpedia import export_neuronpedia

    root, store, _ = _tiny_text_store(tmp_path)
    make_fake_run(root, x=store.to_tensor())
    index = json.loads(export_neuronpedia(root, batch_size=3).read_text())
    run = load_run(root)
    for entry, level in zip(index["levels"], run.levels):
        feats = [f for name in entry["files"]
                 for f in json.loads((root / "neuronpedia" / name).read_text())["features"]]
        assert [f["feature_index"] for f in feats] == list(range(level.num_coarse))
        batch = json.loads((root / "neuronpedia" / entry["files"][0]).read_text())
        assert set(batch) == {"model_id", "layer", "sae_set", "features"} and batch["layer"] == level.index
        ex = run.examples(level.index)
        for f in feats:
            assert sum(f["freq_hist_data_bar_heights"]) == store.num_samples
            acts = f["activations"]
            top = ex["variables"][f["feature_index"]]
            assert len(acts) == 2 * len(top) and all(len(a["tokens"]) == len(a["values"]) for a in acts)
            assert acts[0]["tokens"] == top[0]["context_tokens"] and acts[0]["bin_max"] == pytest.approx(
                top[0]["value"], abs=1e-3)
            assert f["neuron_alignment_l1"][0] <= 1.0 and len(f["neuron_alignment_indices"]) > 0
