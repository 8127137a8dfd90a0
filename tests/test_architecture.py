"""The arrows point one way: ``graphs`` and ``estimators`` never import ``rsmi_nn``."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["estimators", "graphs"])
def test_lower_layers_do_not_import_rsmi_nn(package):
    code = (
        "import sys, importlib, pkgutil\n"
        f"pkg = importlib.import_module({package!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'rsmi_nn' not in sys.modules, sorted(k for k in sys.modules if k.startswith('rsmi_nn'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_estimators_do_not_import_graphs():
    code = (
        "import sys, importlib, pkgutil, estimators\n"
        "for m in pkgutil.walk_packages(estimators.__path__, 'estimators.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'graphs' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
