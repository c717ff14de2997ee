"""Start-up time of the package and of the command (median of repeated fresh processes).

    python benchmarks/startup.py [--repeat 5]

Prints the median wall time of ``python -c "import lightning_prompts"``, ``lightning-prompts --help``
and ``lightning-prompts list methods`` (which imports the method classes, so Lightning), each in a new
process, with the 1-minute load average before and after (the machines are shared; a load above the
core count inflates every figure). Targets: import <= 2 s, --help <= 3 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import lightning_prompts": [sys.executable, "-c", "import lightning_prompts"],
    "lightning-prompts --help": [sys.executable, "-m", "lightning_prompts.cli", "--help"],
    "lightning-prompts list methods": [sys.executable, "-m", "lightning_prompts.cli", "list", "methods"],
    "import torch (reference)": [sys.executable, "-c", "import torch"],
}


def median_seconds(command: list[str], repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    if shutil.which("lightning-prompts") is None:
        print("note: the lightning-prompts script is not on PATH; timing `python -m lightning_prompts.cli`")
    load_before = os.getloadavg()[0]
    print(f"cores: {os.cpu_count()}, load average before: {load_before:.2f}")
    for name, command in COMMANDS.items():
        subprocess.run(command, check=True, capture_output=True)  # warm the file cache and .pyc files
        median, times = median_seconds(command, options.repeat)
        print(f"{name}: median {median:.2f} s over {options.repeat} ({', '.join(f'{t:.2f}' for t in times)})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
