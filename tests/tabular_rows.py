"""Rows in the tabulated benchmark's format with made-up curves, for tests of the simulator (the real
table grows; these stay put)."""

from __future__ import annotations

import math
import random
from typing import Any

from tuning.tabular import ROW_FORMAT


def synthetic_rows(space, n: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """The space's presets and ``n`` random configurations, each with a 12-epoch curve (stage I to
    epoch 4, evaluations at 4, 8 and 12) in which clean and robust accuracy trade off along
    ``stage2.lambda_nat``, plus noise; epochs with more PGD steps take longer."""
    rng = random.Random(seed)
    points = [dict(p) for p in space.presets]
    for i in range(n):
        keys: dict[str, Any] = {"method": space.methods[i % len(space.methods)]}
        for p in space.params:
            if p.key == "method":
                continue
            if p.distribution == "loguniform":
                keys[p.key] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
            elif p.distribution == "int":
                keys[p.key] = rng.randint(int(p.low), int(p.high))
            else:
                keys[p.key] = rng.uniform(p.low, p.high)
        points.append(keys)
    rows = []
    for i, keys in enumerate(points):
        u, q = rng.random(), math.log(keys["stage2.lambda_nat"])
        epochs = []
        for e in range(1, 13):
            entry: dict[str, Any] = {
                "epoch": e,
                "stage": 1 if e <= 4 else 2,
                "cached": False,
                "epoch_s": 2.0 + (e > 4) * 0.3 * keys["stage2.pgd_steps"],
                "eval_s": 0.5 if e % 4 == 0 else 0.0,
            }
            if e % 4 == 0:
                clean = max(5.0, min(99.0, 60 + 10 * q + 20 * u - 5 * (12 - e) / 4))
                aa = max(0.0, min(60.0, 10 - 3 * q + 5 * u + e / 4))
                entry.update(clean_acc=clean, pgd_acc=1.5 * aa, aa_acc=aa)
            epochs.append(entry)
        rows.append(
            {
                "format": ROW_FORMAT,
                "id": f"r{i:03d}-s0",
                "group": f"r{i:03d}",
                "seed": 0,
                "preset": i < len(space.presets),
                "keys": keys,
                "method": keys["method"],
                "stage1_keys": {k: v for k, v in keys.items() if k.startswith("stage1.")},
                "total_epochs": 12,
                "warmup_epochs": 4,
                "n_val": 359,
                "clean_threshold": 49.22,
                "epochs": epochs,
                "wall_s": 0.0,
                "made": {"commit": "test"},
            }
        )
    return rows
