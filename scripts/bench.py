"""Run the chargectl benchmarks: ``python scripts/bench.py [--quick] [--json FILE] [--markdown FILE]
[--only SECTIONS]`` (``make bench``). The code is the ``bench`` package next to this file.

This file is only run, never imported: ``import bench`` finds the package of the same name first.
"""

from __future__ import annotations

import faulthandler
import signal
import sys

from bench.cli import main

if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints where a stuck run is
    sys.exit(main())
