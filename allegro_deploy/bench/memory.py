"""Peak memory of one call, measured in a fresh process."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from .implementations import TORCH_IMPLEMENTATIONS, Implementation, open_implementation, timed_call
from .workloads import Case

MEMORY_HEADROOM = 0.8
"""Fraction of the available memory an (implementation, workload) may be projected to use."""
RUNTIME_HOST_BYTES_PER_EDGE = 120
"""Bytes per edge the runtime implementations hold besides the graph evaluations: neighbor list,
checks and inputs (113 measured with tracemalloc for 100k-atom fcc Cu, 4.3M edges)."""


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def _peak_rss() -> int:
    """Bytes, the largest resident set size of this process since start or reset.

    ``VmHWM`` of ``/proc/self/status``, not ``getrusage``: the latter also reports the
    peak at which any thread of the process exited, which no reset clears.
    """
    return _proc_bytes("/proc/self/status", "VmHWM")


def available_memory() -> int:
    """Bytes of memory available for new allocations (``MemAvailable``)."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def _proc_bytes(path: str, key: str) -> int:
    """Bytes of the ``key:  <n> kB`` line of a ``/proc`` file."""
    with open(path) as file:
        for line in file:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{path} has no {key}")


def measure_peak_memory() -> None:
    """Child side of :func:`peak_memory`: a JSON request on stdin, bytes on stdout."""
    request = json.load(sys.stdin)
    spec = Implementation(**request["spec"])
    case = Case(**{**request["case"], "species": tuple(request["case"]["species"])})
    if spec.name in TORCH_IMPLEMENTATIONS and spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    call = timed_call(open_implementation(spec), case, case.structures())
    _reset_peak_rss()
    baseline = _peak_rss()
    call()
    print(json.dumps({"bytes": _peak_rss() - baseline}))


def peak_memory(spec: Implementation, case: Case) -> int:
    """Peak resident memory (bytes) of the first timed call of ``case`` on ``spec`` above
    the memory held once the model is loaded and the structures are built, measured in a
    fresh Python process so that nothing else run before counts.

    Raises ``RuntimeError`` with the child's last error line when it fails (or is
    killed, e.g. for lack of memory).
    """
    request = {"spec": dataclasses.asdict(spec), "case": dataclasses.asdict(case)}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from allegro_deploy.bench.memory import measure_peak_memory as m; m()",
        ],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines()
        why = lines[-1] if lines else f"killed by signal {-child.returncode} (out of memory?)"
        raise RuntimeError(why)
    return int(json.loads(child.stdout.strip().splitlines()[-1])["bytes"])
