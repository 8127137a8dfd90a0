"""Benchmarks: every figure a ratio against a baseline measured in the same run."""


def memory_gib() -> float | None:
    """This machine's total memory in GiB (``MemTotal``), or None where /proc/meminfo is absent."""
    try:
        with open("/proc/meminfo") as fh:
            return int(fh.readline().split()[1]) / 2**20
    except OSError:
        return None


def cpu_model() -> dict | None:
    """The CPU's model name and the vector extensions torch's CPU kernels use (``/proc/cpuinfo``), or None where it
    is absent. These 2-core VMs are not all one CPU: the code before issue 20 ran the default flow in 66.5 s on one
    (recorded) and 45.4 s on another (AVX-512 + AMX, 2026-12-01), so a figure recorded on one machine is compared
    with another's only with this said."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {"model": fields.get("model name"), "extensions": [f for f in wanted if f in flags]}


def suite_main(run, doc: str, quick_help: str, argv: list[str] | None = None) -> None:
    """The ``python -m benchmarks.<suite> [--quick]`` command of a suite: run it and print its JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    print(json.dumps(run(quick=parser.parse_args(argv).quick), indent=2))
