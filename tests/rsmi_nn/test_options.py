"""The engine's option declarations: checks on creation, routing of keywords, choices in step with the code."""

import pytest

from rsmi_nn.options import FlowOptions, GraphOptions, StepOptions, split_overrides


def test_choices_are_those_the_code_accepts():
    from estimators.bounds import BOUNDS
    from estimators.critics import CRITICS
    from graphs.cooccurrence import METRICS

    step = StepOptions.specs()
    assert step["bound"][1].choices == BOUNDS
    assert step["critic"][1].choices == tuple(CRITICS)
    assert GraphOptions.specs()["metric"][1].choices == METRICS


def test_values_are_checked_with_the_value_and_the_fix():
    with pytest.raises(ValueError, match="levels must be >= 1, got 0"):
        FlowOptions(levels=0)
    with pytest.raises(ValueError, match="bound='mine' is not supported; choose one of infonce"):
        StepOptions(bound="mine")
    with pytest.raises(ValueError, match="must sum below 1"):
        StepOptions(test_fraction=0.6, validation_fraction=0.5)
    with pytest.raises(ValueError, match="unknown option.*levelz.*valid ones are"):
        FlowOptions().replace(levelz=2)
    assert StepOptions(binarize=True).binarize == "straight-through"
    assert StepOptions(binarize=False).binarize is None
    with pytest.raises(ValueError, match="bond_ratio must be <= 1"):
        FlowOptions(bond_ratio=1.5)
    with pytest.raises(ValueError, match="bond_ratio must be > 0"):
        FlowOptions(bond_ratio=0)
    assert FlowOptions(bond_ratio="none").bond_ratio is None and FlowOptions().bond_ratio == 0.9


def test_flow_options_hold_every_step_option():
    flow = FlowOptions(levels=3, hidden=2, steps=50)
    assert flow.step_options() == StepOptions(hidden=2, steps=50)
    assert list(FlowOptions.specs())[:2] == ["levels", "block_size"]  # a class's own options first
    assert set(StepOptions.specs()) < set(FlowOptions.specs())


def test_overrides_are_routed_to_the_class_that_declares_them():
    assert split_overrides({"levels": 2, "k": 4, "hidden": 3}, FlowOptions, GraphOptions) == [
        {"levels": 2, "hidden": 3}, {"k": 4}]
    with pytest.raises(ValueError, match="unknown option 'kk'"):
        split_overrides({"kk": 1}, FlowOptions, GraphOptions)


def test_run_flow_refuses_graph_options_it_would_not_use():
    import torch

    from graphs import lattice_graph
    from rsmi_nn import run_flow

    with pytest.raises(ValueError, match="uses only k of the graph options"):
        run_flow(torch.randn(100, 16), lattice_graph(4), metric="pmi")
