"""Peak resident memory of a process's own address space, and a runner that records it.

``ru_maxrss`` (from ``getrusage`` or ``wait4``) cannot be trusted for a child process on
Linux: ``execve`` carries the high-water mark of the address space it replaces into the new
program's, and Python's ``subprocess`` starts children by ``vfork`` + ``exec``, so a child
of a benchmark driver that once held 1.4 GiB reports at least 1.4 GiB whatever it did.
``VmHWM`` in ``/proc/self/status`` is the high-water mark of the current address space only.

``python -m benchmarks.peak OUT -m module [args...]`` (or ``-c code [args...]``) runs the
command and writes its peak (GiB) to the file OUT when it exits, however it exits.
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys
from pathlib import Path


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB (``VmHWM``; ``ru_maxrss`` where /proc is absent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**30 if sys.platform == "darwin" else maxrss / 2**20  # bytes on macOS, KiB elsewhere


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in ("-m", "-c"):
        raise SystemExit("usage: python -m benchmarks.peak OUT (-m module | -c code) [args...]")
    out, how, what, rest = Path(argv[0]), argv[1], argv[2], argv[3:]
    atexit.register(lambda: out.write_text(f"{peak_rss_gib()}\n"))
    if how == "-m":
        sys.argv = [what, *rest]
        runpy.run_module(what, run_name="__main__", alter_sys=True)
    else:
        sys.argv = ["-c", *rest]
        exec(compile(what, "<string>", "exec"), {"__name__": "__main__"})


if __name__ == "__main__":
    main(sys.argv[1:])
