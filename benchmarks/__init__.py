"""Benchmarks: every figure a ratio against a baseline measured in the same run."""


def memory_gib() -> float | None:
    """This machine's total memory in GiB (``MemTotal``), or None where /proc/meminfo is absent."""
    try:
        with open("/proc/meminfo") as fh:
            return int(fh.readline().split()[1]) / 2**20
    except OSError:
        return None


def suite_main(run, doc: str, quick_help: str, argv: list[str] | None = None) -> None:
    """The ``python -m benchmarks.<suite> [--quick]`` command of a suite: run it and print its JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    print(json.dumps(run(quick=parser.parse_args(argv).quick), indent=2))
