"""The arrows point one way: ``estimators`` <- ``graphs`` <- engine (``rsmi_nn``) <- application (``rsmi_nn.app``).

Each check imports every module of a layer in a fresh interpreter and lists what was loaded: a lower
layer never loads a higher one, and the engine loads none of the application's libraries (argparse,
TOML, HTML, matplotlib).
"""

import json
import subprocess
import sys

import pytest

APPLICATION_LIBRARIES = ("argparse", "tomllib", "tomli_w", "html", "matplotlib")


def _loaded_after_importing(package: str, *, skip: str | None = None) -> set[str]:
    """Names in ``sys.modules`` after importing every module of ``package`` (except those under ``skip``)."""
    code = (
        "import sys, json, importlib, pkgutil\n"
        "def walk(name):\n"
        f"    if name == {skip!r}:\n"
        "        return\n"
        "    mod = importlib.import_module(name)\n"
        "    for m in pkgutil.iter_modules(getattr(mod, '__path__', [])):\n"
        "        walk(name + '.' + m.name)\n"
        f"walk({package!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


@pytest.mark.parametrize("package", ["estimators", "graphs"])
def test_lower_layers_do_not_import_rsmi_nn(package):
    loaded = _loaded_after_importing(package)
    assert "rsmi_nn" not in _top(loaded), sorted(n for n in loaded if n.startswith("rsmi_nn"))


def test_estimators_do_not_import_graphs():
    assert "graphs" not in _top(_loaded_after_importing("estimators"))


def test_engine_does_not_import_the_application():
    """No engine module loads ``rsmi_nn.app`` or an application library its dependencies do not load anyway.

    ``import torch`` itself loads ``argparse`` (torch -> unittest -> argparse), so argparse is judged
    against what the engine's dependencies load on their own.
    """
    loaded = _loaded_after_importing("rsmi_nn", skip="rsmi_nn.app")
    assert not [n for n in loaded if n.startswith("rsmi_nn.app")]
    baseline = _loaded_after_importing("estimators") | _loaded_after_importing("graphs")
    extra = (_top(loaded) - _top(baseline)) & set(APPLICATION_LIBRARIES)
    assert not extra, sorted(extra)
    assert not {"tomllib", "tomli_w", "html", "matplotlib"} & _top(loaded)


def test_importing_the_engine_package_loads_nothing_heavy():
    code = ("import sys, rsmi_nn, graphs, estimators\n"
            f"print(sorted(m for m in {APPLICATION_LIBRARIES + ('torch', 'rsmi_nn.app')!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", out


def test_the_command_line_starts_without_torch():
    """`rsmi --help` and argument errors answer at once: the CLI imports torch only when a command runs."""
    code = "import sys, rsmi_nn.app.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
