"""The long fuzzing profile: hypothesis-generated hostile worlds (tests/test_fuzz_world.py) through `warta run`.

    python bench/bench_fuzz.py --worlds 100 [--seed 0] [--out bench/results/fuzz.json]

Each world is one healthy outlet and 3-8 hostile hosts on loopback; one in-process `warta run` (DirectFnRunner,
one worker, NER off) goes through it. A world fails when the run does not exit 0, misses the healthy outlet's
articles, leaves an entry unaccounted (not exactly one of article/duplicate, error row, backlog), or overruns
the budget. Reported: worlds and hosts tried, entries checked, failures (with the world that failed), seconds.
Needs no shared data.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz_world as fuzz  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worlds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench/results/fuzz.json"))
    ns = ap.parse_args(argv)
    servers = fuzz.Servers()
    tally = {"worlds": 0, "hosts": 0, "entries": 0, "failures": [], "max_world_seconds": 0.0}
    t0 = time.monotonic()

    @seed(ns.seed)
    @settings(max_examples=ns.worlds, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(world=fuzz.worlds)
    def one(world):
        tally["worlds"] += 1
        tally["hosts"] += len(world)
        faulthandler.dump_traceback_later(180, exit=True)  # a hung world: every thread's stack, then exit
        try:
            got = fuzz.run_world(world, servers, Path(tempfile.mkdtemp(prefix="warta-fuzz-")))
            tally["entries"] += got["entries"]
            tally["max_world_seconds"] = max(tally["max_world_seconds"], round(got["seconds"], 1))
        except Exception as e:  # a failure is counted and reported, not shrunk
            tally["failures"].append({"error": f"{type(e).__name__}: {e}"[:500], "world": repr(world)[:4000],
                                      "trace": traceback.format_exc()[-1500:]})
            print("FAILED", tally["failures"][-1]["error"], tally["failures"][-1]["world"], file=sys.stderr)
        finally:
            faulthandler.cancel_dump_traceback_later()
        print(f"worlds {tally['worlds']} hosts {tally['hosts']} entries {tally['entries']} "
              f"failures {len(tally['failures'])} | {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)

    try:
        one()
    finally:
        servers.stop()
    tally["seconds"] = round(time.monotonic() - t0, 1)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(tally, indent=1) + "\n")
    print(json.dumps({k: v if k != "failures" else len(v) for k, v in tally.items()}))
    return 1 if tally["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
