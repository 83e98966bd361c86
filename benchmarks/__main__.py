"""Run every ``benchmarks/bench_*.py`` (each defines ``main()``): ``python -m benchmarks``.

Pass names to run a subset: ``python -m benchmarks bids_discovery``.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    wanted = set(sys.argv[1:] if argv is None else argv)
    scripts = sorted(Path(__file__).resolve().parent.glob("bench_*.py"))
    failed = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        if wanted and name not in wanted and script.stem not in wanted:
            continue
        print(f"== {script.stem} ==", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.{script.stem}").main()
        except Exception as error:  # report and go on with the other benchmarks
            failed.append(script.stem)
            print(f"!! {script.stem} failed: {type(error).__name__}: {error}", flush=True)
        print(f"== {script.stem}: {time.perf_counter() - start:.1f} s ==\n", flush=True)
    if failed:
        print(f"Failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
