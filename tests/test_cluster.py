"""Workers that are not the launcher (#23): a dask.distributed cluster whose Python has warta from the wheel only,
a lake on an S3 API, and the checks that models, credentials and parallelism are the workers' own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from conftest import ROOT, T0

ARTICLES = 24  # Indonesian pages added to the world: enough NER batches for every worker to get some
# fp32: the two runners batch articles differently, and int8's dynamic quantization scales activations per batch,
# so int8 tags may move with batch composition (#29 tests their agreement); fp32 must agree exactly.
SETTINGS = """
http: {host_delay: 0, total_timeout: 3, read_timeout: 2, connect_timeout: 1, retries: 0, backoff: 0.01, max_bytes: 1000000}
ner: {batch_size: 2, precision: fp32, threads: 1}
"""
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", "data",
                                    "data-example", ".pytest_cache", ".ruff_cache")


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with warta installed from its wheel; it borrows the other dependencies
    from this venv's site-packages through a .pth line (whose own .pth files, the checkout's editable install
    among them, are then not processed)."""
    base = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(ROOT, base / "src", ignore=NOT_SOURCE)  # building writes beside the sources
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(base / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel, = (base / "dist").glob("warta-*.whl")
    shutil.rmtree(source)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")], check=True, timeout=120)
    python = base / "venv" / "bin" / "python"
    target = site_packages(python)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                          str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    (target / "zz_borrowed.pth").write_text(str(site_packages(Path(sys.executable))) + "\n")
    return python


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """What a cluster node has: its own PATH/HOME and cloud credentials, nothing pointing at the checkout."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, **extra}


class DaskCluster:
    """A scheduler and ``workers`` single-threaded worker processes, all run by ``python``, in ``cwd``."""

    def __init__(self, python: Path, cwd: Path, env: dict[str, str], workers: int = 3):
        self.procs: list[subprocess.Popen] = []
        file = cwd / "scheduler.json"
        log = open(cwd / "cluster.log", "w")  # noqa: SIM115 (closed with the processes)
        self.log = log

        def start(*args):
            self.procs.append(subprocess.Popen([str(python), "-m", *args], cwd=cwd, env=env, stdout=log,
                                               stderr=subprocess.STDOUT))

        start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(file))
        deadline = time.monotonic() + 120
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.address = json.loads(file.read_text())["address"]
        for i in range(workers):
            start("distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                  "--memory-limit", "0", "--name", f"w{i}", "--local-directory", str(cwd / f"w{i}"))
        from distributed import Client
        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.log.close()


def lake_rows(env: dict[str, str], prefix: str) -> list[tuple]:
    import s3fs
    fs = s3fs.S3FileSystem(key="test", secret="test", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"])
    table = ds.dataset(f"lake/{prefix}/articles", filesystem=fs, format="parquet", partitioning="hive").to_table()
    return sorted((r["url"], r["title"], r["text"], r["duplicate_of"],
                   tuple(sorted((e["start_char"], e["end_char"], e["label"], e["mention"], e["canonical"]) for e in r["entities"] or [])))
                  for r in table.to_pylist())


def add_pages(world, n: int) -> None:
    paras = world.seed_paras
    for i in range(n):
        picked = [f"Laporan {i}, bagian {j}. " + paras[(i + 3 * j) % len(paras)] for j in range(4)]
        world.add_id_page(f"kabar-{i}", f"Kabar nomor {i}", picked, T0)
    world.publish_id_feed()


@pytest.mark.slow
def test_dask_workers_with_warta_from_the_wheel_tag_their_share_on_s3(world, tmp_path, s3, wheel_python):
    add_pages(world, ARTICLES)
    feeds = world.feeds_yaml(tmp_path / "feeds.yaml", "patroli", "kabar", "en")
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS)
    node = tmp_path / "node"  # the workers' working directory: outside the checkout
    trace = tmp_path / "trace"
    trace.mkdir(parents=True)
    node.mkdir()

    def warta(*args, env=None):
        return subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--feeds", str(feeds), "--config",
                               str(config), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, **s3, **(env or {})})

    cluster = DaskCluster(wheel_python, node, worker_env({**s3, "WARTA_NER_TRACE": str(trace),
                                                          "WARTA_MODEL_CACHE": str(node / "cache")}))
    try:
        on_dask = warta("--output", "s3://lake/dask", "--runner", "dask", "--dask-address", cluster.address)
    finally:
        cluster.close()
    assert on_dask.returncode == 0, on_dask.stderr[-3000:] + (node / "cluster.log").read_text()[-3000:]
    direct = warta("--output", "s3://lake/direct", "--workers", "1")
    assert direct.returncode == 0, direct.stderr[-3000:]

    expected = lake_rows(s3, "direct")
    assert len(expected) >= ARTICLES and sum(len(r[-1]) for r in expected) >= ARTICLES  # entities were found
    assert lake_rows(s3, "dask") == expected

    batches = [json.loads(p.read_text()) for p in trace.glob("*.json")]
    wheel_site = site_packages(wheel_python)
    per_worker: dict[int, int] = {}
    for b in batches:
        assert b["warta"] == [str(wheel_site / "warta")], b  # the worker imported warta from the wheel
        if not b["model"]:  # articles of a language without a model (en here)
            continue
        # and found the shipped model inside its own installed package, not in the launcher's checkout
        assert all(Path(p).is_relative_to(wheel_site / "warta" / "models") for p in b["model"].values()), b
        per_worker[b["pid"]] = per_worker.get(b["pid"], 0) + b["articles"]
    worker_pids = {p.pid for p in cluster.procs[1:]}
    assert set(per_worker) == worker_pids, (per_worker, worker_pids)  # every worker tagged a share
    assert sum(per_worker.values()) >= ARTICLES


# -- the pieces, one at a time -------------------------------------------------------------------------------
def test_the_job_carries_where_a_model_was_found_not_the_launchers_paths():
    from warta.config.settings import Feed, Settings
    from warta.pipeline.build import Plan
    from warta.transforms.ner import REPO_MODELS, Tagger

    plan = Plan(feeds=[Feed(name="kabar", url="http://x.test/rss", language="id")], settings=Settings(),
                store=None, run_id="r", validators={})
    refs = plan.ner_paths()
    assert refs["id"] == "warta" and str(REPO_MODELS) not in json.dumps(refs)
    tagger = Tagger(plan.settings.ner, refs)
    assert tagger.local_paths("id")["ner_model_path"] == str(REPO_MODELS / "id" / "ner.pt")  # found by this process


def test_model_urls_are_copied_once_per_process_into_the_local_cache(tmp_path, monkeypatch):
    import uuid

    import fsspec

    from warta.config.settings import NerSettings
    from warta.transforms import ner

    monkeypatch.setenv("WARTA_MODEL_CACHE", str(tmp_path / "cache"))
    memory, root = fsspec.filesystem("memory"), f"models-{uuid.uuid4().hex}"
    for name in ("ner.pt", "ner_pretrain.pt"):
        memory.pipe_file(f"/{root}/ms/{name}", (ner.REPO_MODELS / "id" / name).read_bytes())
    settings = NerSettings(model_dir=f"memory://{root}")
    assert "ms" in ner.known_languages(settings)
    assert ner.model_source("ms", settings) == ("model_dir", {"ner_model_path": f"memory://{root}/ms/ner.pt",
                                                             "ner_pretrain_path": f"memory://{root}/ms/ner_pretrain.pt"})
    tagger = ner.Tagger(settings, {"ms": "model_dir"})
    ents = tagger.tag(["Presiden Joko Widodo berkunjung ke Jakarta bersama Menteri Sri Mulyani."], "ms")[0]
    assert any(e["label"] == "PER" for e in ents)
    local = tagger.loaded["ms"]
    assert all(Path(p).is_relative_to(tmp_path / "cache") for p in local.values())
    assert Path(local["ner_model_path"]).read_bytes() == (ner.REPO_MODELS / "id" / "ner.pt").read_bytes()
    memory.pipe_file(f"/{root}/ms/ner.pt", b"changed after this process copied it")
    assert ner.Tagger(settings, {"ms": "model_dir"}).local_paths("ms") == local  # copied once per process
    assert Path(local["ner_model_path"]).read_bytes() == (ner.REPO_MODELS / "id" / "ner.pt").read_bytes()


def test_a_worker_without_the_model_fails_instead_of_writing_error_rows(tmp_path):
    from warta.config.settings import NerSettings
    from warta.transforms.ner import ModelLoadError, Tagger, _TagFn

    # the launcher found the model in ner.model_dir; this "worker" finds nothing there
    settings = NerSettings(model_dir=str(tmp_path / "nothing"))
    with pytest.raises(ModelLoadError, match=r"no NER model for 'ms' on worker .*the launcher found one \(model_dir\)"):
        Tagger(settings, {"ms": "model_dir"}).model("ms")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    fn = _TagFn(settings, {"ms": {"ner_model_path": str(broken)}}, ())
    fn.setup()
    with pytest.raises(ModelLoadError, match=r"the 'ms' NER model does not load on worker"):
        list(fn.process([{"article_id": "a", "text": "Teks berita.", "language": "ms"}]))


def test_an_unloadable_model_fails_the_run_before_anything_commits(world, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    config = tmp_path / "settings.yaml"
    config.write_text(SETTINGS.replace("threads: 1}", f"threads: 1, languages: {{id: {{ner_model_path: '{broken}'}}}}}}"))
    out = tmp_path / "lake"
    res = subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--feeds",
                          str(world.feeds_yaml(tmp_path / "feeds.yaml", "kabar")), "--config", str(config),
                          "--output", str(out), "--workers", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "configuration error: the 'id' NER model does not load on worker" in res.stderr, res.stderr[-3000:]
    assert not (out / "articles").exists() and not (out / "errors").exists()
    assert not list((out / "_state").glob("runs/*.json"))


def test_credentials_from_the_environment_stay_out_of_the_job(s3, monkeypatch):
    import base64
    import bz2
    import zlib

    import apache_beam as beam
    import fsspec
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    from warta.config.settings import Feed, Settings
    from warta.lake.store import Store
    from warta.pipeline.build import Plan, build

    secret = "env-secret-5b1f0c"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    # what FSSPEC_S3_ENDPOINT_URL gives a process started with it (fsspec reads it at import)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3["FSSPEC_S3_ENDPOINT_URL"]})

    def job_bytes(settings: Settings) -> bytes:
        store = Store("s3://lake/creds", settings.storage_options)
        store.check_writable()  # the launcher itself reaches the lake with the environment's credentials
        plan = Plan(feeds=[Feed(name="a", url="http://x.test/rss", language="id")], settings=settings, store=store,
                    run_id="r", validators={})
        p = beam.Pipeline()
        build(p, plan)
        out = b""
        for t in p.to_runner_api().components.transforms.values():
            if t.spec.urn == common_urns.primitives.PAR_DO.urn:
                fn = base64.b64decode(beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload)
                out += zlib.decompress(fn) if fn[:1] == b"x" else bz2.decompress(fn)  # Beam's pickler: either
        return out

    assert b"Store" in job_bytes(Settings()) and secret.encode() not in job_bytes(Settings())
    explicit = Settings(storage_options={"secret": "explicit-7d2e", "key": "test",
                                         "endpoint_url": s3["FSSPEC_S3_ENDPOINT_URL"]})
    assert b"explicit-7d2e" in job_bytes(explicit)  # set by the user in the settings file: it travels, as documented


def test_parallelism_comes_from_the_runner(monkeypatch):
    from warta.config.settings import Settings
    from warta.pipeline import runner

    monkeypatch.setattr(runner, "dask_slots", lambda address: 12 if address == "tcp://big:8786" else 0)
    options = runner.beam_options([], "dask", "tcp://big:8786")
    assert runner.parallel_layout(options, "dask", Settings()) == (12, "shuffle", True)
    assert options.get_all_options()["npartitions"] == 12  # the Creates are split over the cluster's threads
    flink = runner.beam_options(["--parallelism", "40"], "FlinkRunner", None)
    assert runner.parallel_layout(flink, "FlinkRunner", Settings()) == (40, "reshuffle", True)
    dataflow = runner.beam_options(["--max_num_workers", "30"], "DataflowRunner", None)
    assert runner.parallel_layout(dataflow, "DataflowRunner", Settings())[0] == 30
    direct = runner.beam_options([], None, None, workers=2)
    assert runner.parallel_layout(direct, None, Settings()) == (2, "bundle", False)  # fused, no shuffle
    assert runner.parallel_layout(options, "dask", Settings(parallelism=5))[0] == 5  # the setting wins
