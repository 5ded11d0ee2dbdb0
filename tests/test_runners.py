"""Same pipeline elsewhere: a real dask.distributed cluster, an S3 API on loopback (moto), and --every."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pyarrow.dataset as ds
import pytest
from conftest import ROOT, T0

pytestmark = pytest.mark.slow
COLS = ["article_id", "url", "source", "title", "published_at", "language", "text", "content_hash", "duplicate_of"]


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "run_local.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def rows(dataset, cols=COLS):
    return sorted(tuple(r[c] for c in cols) for r in dataset.to_table().to_pylist())


def local_rows(out):
    return rows(ds.dataset(str(out / "articles"), format="parquet", partitioning="hive"))


def test_dask_cluster_writes_the_same_lake_as_direct_runner(world, tmp_path, fast_config):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli", "kabar", "en", "missing")
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    a = cli("--feeds", feeds, "--output", direct, "--config", fast_config, "--no-ner")
    on_dask = tmp_path / "dask.yaml"  # the runner chosen in the settings file (no --runner flag)
    on_dask.write_text(fast_config.read_text() + "runner: dask\n")
    b = cli("--feeds", feeds, "--output", dask, "--config", on_dask, "--no-ner")
    assert a.returncode == 0, a.stderr[-2000:]
    assert b.returncode == 0, b.stderr[-2000:]
    assert "Start worker" in b.stderr or "distributed" in b.stderr  # it really ran on dask.distributed
    assert local_rows(dask) == local_rows(direct) and len(local_rows(direct)) >= 5
    err = ["url", "stage", "status"]
    assert rows(ds.dataset(str(dask / "errors"), partitioning="hive"), err) == rows(
        ds.dataset(str(direct / "errors"), partitioning="hive"), err)
    def counts(res):  # the summary line without run id and seconds
        line = [l for l in res.stderr.splitlines() if "warta run" in l][-1]
        return re.sub(r"\d+\.\d+s$", "", line.split("warta run", 1)[1].split(":", 1)[1].strip())
    assert counts(a) == counts(b)


def s3_rows(env, prefix, dataset="articles", cols=COLS):
    import s3fs
    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"])
    return rows(ds.dataset(f"lake/{prefix}/{dataset}", filesystem=fs, format="parquet", partitioning="hive"), cols)


def s3_keys(env, prefix):
    import s3fs
    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"])
    return sorted(fs.find(f"lake/{prefix}"))


def test_s3_output_rerun_adds_nothing_and_survives_a_crash(world, server, tmp_path, fast_config, s3):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli", "kabar", "en")
    first = cli("--feeds", feeds, "--output", "s3://lake/clean", "--config", fast_config, "--no-ner", env=s3)
    assert first.returncode == 0, first.stderr[-2000:]
    clean = s3_rows(s3, "clean")
    assert len(clean) >= 5
    assert any(k.endswith(".parquet") and "/articles/date=" in k for k in s3_keys(s3, "clean"))
    server.requests.clear()
    again = cli("--feeds", feeds, "--output", "s3://lake/clean", "--config", fast_config, "--no-ner", env=s3)
    assert again.returncode == 0 and s3_rows(s3, "clean") == clean
    assert [p for p in server.paths_requested() if p.endswith(".html")] == []

    killed = cli("--feeds", feeds, "--output", "s3://lake/crash", "--config", fast_config, "--no-ner",
                 env={**s3, "WARTA_KILL_AT": "publish"})
    assert killed.returncode == -signal.SIGKILL
    rerun = cli("--feeds", feeds, "--output", "s3://lake/crash", "--config", fast_config, "--no-ner", env=s3)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert s3_rows(s3, "crash") == clean
    assert not any("/pending/" in k or k.endswith("LOCK") for k in s3_keys(s3, "crash"))


def test_every_keeps_polling_until_sigterm_and_picks_up_new_items(world, tmp_path, fast_config):
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli")
    out = tmp_path / "lake"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--output", str(out),
                             "--config", str(fast_config), "--no-ner", "--every", "2s"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def runs():
            return len(list((out / "_state" / "runs").glob("*.json"))) if (out / "_state" / "runs").exists() else 0

        deadline = time.monotonic() + 120
        while runs() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = len(local_rows(out))
        world.add_id_page("susulan", "Berita susulan", [f"Kalimat {j}. " + p for j, p in enumerate(world.seed_paras[1:7])],
                          T0 + timedelta(days=2))
        world.publish_id_feed()
        target = runs() + 2
        while runs() < target and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(local_rows(out)) == before + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "finishing the current poll" in stderr
    assert not (out / "_state" / "LOCK").exists()
