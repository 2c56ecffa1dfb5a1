"""How long `chargectl --help` takes (wall time, median of N runs) next to a bare `python -c pass`.

The requirement is under half a second; a test checks the cause (no SDK is imported to build the help),
this script measures the effect on this machine: python scripts/bench_cli_help.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "chargectl")
    bare = timed([sys.executable, "-c", "pass"], args.runs)
    help_s = timed([exe, "--help"], args.runs)
    print(f"python -c pass      {bare * 1000:7.1f} ms")
    print(
        f"chargectl --help    {help_s * 1000:7.1f} ms   ({help_s / bare:.1f}x a bare interpreter; limit 500 ms)"
    )


if __name__ == "__main__":
    main()
