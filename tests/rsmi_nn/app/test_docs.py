"""The reference docs are generated from the parser and the option declarations, and committed: never stale."""

from pathlib import Path

from rsmi_nn.app.docs import cli_reference, options_reference

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_committed_docs_match_the_code():
    for name, text in (("cli.md", cli_reference()), ("options.md", options_reference())):
        assert (DOCS / name).read_text(encoding="utf-8") == text, (
            f"docs/{name} is stale; regenerate it with `python -m rsmi_nn.app.docs`")


def test_every_config_key_is_a_flag_of_rsmi_run():
    from rsmi_nn.app.cli_parser import build_parser
    from rsmi_nn.app.config import SECTIONS

    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    dests = {a.dest for a in run._actions}
    missing = [f"{s}.{k}" for s, options in SECTIONS.items() for k in options.specs() if f"{s}.{k}" not in dests]
    assert not missing, missing
