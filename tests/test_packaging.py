"""Shipping warta to runner workers: Beam's --setup_file build and a wheel for --extra_package, offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from conftest import ROOT, WITHOUT_CHECKOUT

pytestmark = pytest.mark.slow
PACKAGES = {"pipeline", "transforms", "lake", "net", "config", "models", "examples"}
NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", "data",
                                    "data-example", ".pytest_cache")


@pytest.fixture
def source(tmp_path):
    """A copy of the checkout: building writes egg-info beside the sources, never into the repository."""
    return shutil.copytree(ROOT, tmp_path / "src", ignore=NOT_SOURCE)


def test_setup_file_builds_the_sdist_beam_stages(source, tmp_path):
    from apache_beam.runners.portability.stager import Stager

    out = tmp_path / "staged"
    out.mkdir()
    # exactly what Dataflow/Flink/Spark do with --setup_file ./setup.py before starting workers
    tarball = Stager._build_setup_package(str(source / "setup.py"), str(out), None)
    top = {name.split("/")[1] for name in tarfile.open(tarball).getnames() if name.count("/") >= 2}
    assert PACKAGES <= top, top  # the source folders; installed, they become warta.<folder> (pyproject)


def test_wheel_for_extra_package_holds_every_package_and_imports(source, tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("warta-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # one top-level name (#24): nothing else lands in site-packages
    assert {n.split("/")[0] for n in names if not n.startswith("warta-")} == {"warta"}
    assert PACKAGES == {n.split("/")[1] for n in names if n.startswith("warta/") and n.count("/") >= 2}
    assert "warta/config/settings.example.yaml" in names
    # data the code loads at run time: the Indonesian NER model (#17), the report's template, the example site
    assert {"warta/models/stanza/id/ner.pt", "warta/models/stanza/id/ner_pretrain.pt",
            "warta/pipeline/templates/report.html.j2", "warta/examples/site/feeds.yaml",
            "warta/examples/site/patroli/feed.xml"} <= set(names)
    # the wheel alone (no checkout on the path) provides every module the pipeline imports
    unpacked = tmp_path / "site"  # as pip installs it (zipimport does not do namespace packages)
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = (WITHOUT_CHECKOUT + f"sys.path.insert(0, {str(unpacked)!r}); "
            "import warta.pipeline.cli, warta.pipeline.build, warta.transforms.fetch, warta.lake.commit, "
            "warta.net.http, warta.config.settings; print(warta.pipeline.build.__file__)")
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(str(unpacked)), res.stdout
