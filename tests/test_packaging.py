"""Shipping warta to runner workers: Beam's --setup_file build and a wheel for --extra_package, offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow
PACKAGES = {"pipeline", "transforms", "lake", "net", "config", "models"}
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
    assert PACKAGES <= top, top


def test_wheel_for_extra_package_holds_every_package_and_imports(source, tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("warta-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert PACKAGES <= {n.split("/")[0] for n in names}
    assert "config/settings.example.yaml" in names
    # data the code loads at run time: the Indonesian NER model (#17), the report's template
    assert {"models/stanza/id/ner.pt", "models/stanza/id/ner_pretrain.pt", "pipeline/templates/report.html.j2"} <= set(names)
    # the wheel alone (no checkout on the path) provides every module the pipeline imports
    code = (f"import sys; sys.path.insert(0, {str(wheel)!r}); "
            "import pipeline.cli, pipeline.build, transforms.fetch, lake.commit, net.http, config.settings; "
            "print(pipeline.build.__file__)")
    res = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(str(wheel)), res.stdout
