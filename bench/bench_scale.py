"""Issue #23's three scale benchmarks behind one command.

    python bench/bench_scale.py history  [scale_history.py's flags]   # (a) 10M keys / 1M signatures vs empty
    python bench/bench_scale.py balance  [scale_balance.py's flags]   # (b) CPU per worker on 1, 2, 3 Dask workers
    python bench/bench_scale.py launcher [scale_launcher.py's flags]  # (c) the launcher over 20,000 feeds
    python bench/bench_scale.py summary                                # the README rows from bench/results/

Each part is its own module (``bench/scale_<part>.py``, documented there) and writes
``bench/results/scale_<part>.json``; ``summary`` reads those files and prints the goals next to the numbers.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PARTS = ("history", "balance", "launcher")


def _load(part: str) -> dict | None:
    path = RESULTS / f"scale_{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary() -> list[str]:
    """One Markdown row per part: what was measured, the goal, met or not."""
    rows = ["| benchmark | measured | goal | met |", "|---|---|---|---|"]
    h = _load("history")
    if h:
        c = h["conditions"]
        rows.append(f"| (a) history: {c['keys']:,} keys, {c['window']:,} window signatures, {c['articles']:,}-article "
                    f"run | wall {h['wall_ratio']}× the empty lake's, peak RSS {h['rss_rise_mb']:+} MB | ≤ 1.25×, "
                    f"≤ +300 MB | {'yes' if h['wall_ratio'] <= 1.25 and h['rss_rise_mb'] <= 300 else 'no'} |")
    b = _load("balance")
    if b:
        spread = ", ".join(f"{r['workers']} worker{'s' * (r['workers'] > 1)}: {r['max_over_min']}×" for r in b["rows"])
        rows.append(f"| (b) balance: {b['scale']['articles']} articles on a local Dask cluster | CPU per worker "
                    f"max/min {spread} | ≤ 2× | {'yes' if b['balanced_within_2x'] else 'no'} |")
    launch = _load("launcher")
    if launch:
        for label, r in sorted(launch["runs"].items()):
            rows.append(f"| (c) launcher ({label}): {r['feeds']:,} feeds | first run: {r['first']['launcher_cpu_s']} "
                        f"CPU s, {r['first']['launcher_peak_rss_mb']} MB peak; all 304: "
                        f"{r['again']['launcher_cpu_s']} CPU s, {r['again']['launcher_peak_rss_mb']} MB | measured "
                        f"| — |")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*PARTS, "summary"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "summary":
        print("\n".join(summary()))
        return 0
    return importlib.import_module(f"bench.scale_{argv[0]}").main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
