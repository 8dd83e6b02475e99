#!/bin/bash
# Issue 37's digits runs after the dfhl_rs seed-0 paper-table row, one at a time under nice -n 10:
# FERD at reduced cost (20 generator steps, 5 IFD steps per round: NOT its official settings, which cost
# 200 x (50 + 3) teacher passes per round), then the dfhl_rs rows at seeds 1 and 2.
cd "$(dirname "$0")/.."
while pgrep -f "run_method\('digits', 'dfhl_rs', 0" > /dev/null; do sleep 15; done
one() {  # key seed folder overrides-json
  PYTHONPATH=$PWD nice -n 10 /work/main/.venv/bin/python -c "
import time, json
from pathlib import Path
from analysis.paper_tables import run_method
t = time.time()
r = run_method('digits', '$1', $2, Path('$3'), False, json.loads('$4'))
print('$1', $2, '$4', f'{time.time() - t:.0f} s', json.dumps({k: round(v, 2) for k, v in r.items()}), flush=True)
"
}
one ferd 0 runs/ferd-reduced/seed0 '{"ferd.generator_steps": 20, "ferd.ifd_steps": 5}' >> results/rows_ferd_reduced.log 2>&1
one dfhl_rs 1 runs/paper-digits/dfhl_rs/seed1 '{}' >> results/rows_dfhl_rs.log 2>&1
one dfhl_rs 2 runs/paper-digits/dfhl_rs/seed2 '{}' >> results/rows_dfhl_rs.log 2>&1
