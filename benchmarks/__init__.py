"""msimaging benchmarks: each ``bench_*.py`` times msimaging against an anchor in the same run.

Run them all with ``python -m benchmarks`` (or ``make bench``); results go to
``benchmarks/results/<name>.json``.
"""
