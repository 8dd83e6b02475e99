#!/bin/bash
# The new/changed paper-table rows on digits, 3 seeds each, into runs/paper-digits (the folder
# `python analysis/report.py --paper-tables --dataset digits --seeds 0 1 2` reuses), one at a time.
cd "$(dirname "$0")/.."
for key in "$@"; do
  for seed in 0 1 2; do
    PYTHONPATH=$PWD nice -n 10 /work/main/.venv/bin/python -c "
import sys, time, json
from pathlib import Path
from analysis.paper_tables import run_method
t = time.time()
r = run_method('digits', '$key', $seed, Path('runs/paper-digits/$key/seed$seed'), False, {})
print('$key', $seed, f'{time.time() - t:.0f} s', json.dumps({k: round(v, 2) for k, v in r.items()}), flush=True)
"
  done
done
