"""Run every benchmark (``make bench``); each writes its JSON to bench/results/.

Sizes are arguments of the individual scripts; this runs the set reported in the README.
Expect about an hour on 2 cores, most of it NER in the 10,000-article pipeline run.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = [
    ["bench/bench_extraction.py", "--memory-pages", "10000"],
    ["models/evaluate_id_ner.py"],
    ["bench/bench_dedup.py"],
    ["bench/bench_pipeline.py", "--sizes", "1200", "--noop", "--json", "bench/results/pipeline_1200.json"],
    ["bench/bench_pipeline.py", "--sizes", "10000", "--modes", "default", "--json", "bench/results/pipeline_10000.json"],
    ["bench/bench_pipeline.py", "--sizes", "10000", "--outlets", "200", "--no-ner", "--modes", "default",
     "--host-delay", "0.02", "--json", "bench/results/load_200x50.json"],
    ["bench/bench_archive.py", "--sizes", "1000", "3000"],
    ["bench/bench_lake.py"],
    ["bench/bench_report.py"],
]

if __name__ == "__main__":
    for step in STEPS:
        print("==>", " ".join(step), flush=True)
        subprocess.run([sys.executable, *step], cwd=ROOT, check=True)
