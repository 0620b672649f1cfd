"""examples/kdengine-dkd: installed with pip it is a plugin like any other; its own tests pass; a recipe
can use its loss term."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "kdengine-dkd"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dkd_site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("dkd-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True,
    )
    return target


@pytest.fixture
def dkd_installed(dkd_site, monkeypatch):
    from kdengine.plugins.catalog import get_catalog

    monkeypatch.syspath_prepend(str(dkd_site))
    get_catalog(refresh=True)
    yield dkd_site
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith("kdengine_dkd")]:
        del sys.modules[name]
    get_catalog(refresh=True)


def test_installed_example_is_in_the_catalog_as_dkd_dkd(dkd_installed):
    from kdengine.plugins.catalog import get_catalog

    catalog = get_catalog()
    entry = catalog.entry("loss", "dkd.dkd")
    assert entry.plugin == "dkd" and entry.cls.needs_teacher
    source = catalog.plugins["dkd"]
    assert (source.distribution, source.version, source.builtin) == ("kdengine-dkd", "0.1.0", False)


def test_plugins_command_lists_it(dkd_installed, capsys):
    from kdengine.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "dkd (kdengine-dkd 0.1.0" in out and "dkd.dkd" in out


def test_the_examples_own_tests_pass_against_the_installed_package(dkd_site):
    env = {**os.environ, "PYTHONPATH": str(dkd_site), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=EXAMPLE, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    # the tests imported the installed copy, not the source folder
    check = subprocess.run([sys.executable, "-c", "import kdengine_dkd; print(kdengine_dkd.__file__)"],
                           cwd=EXAMPLE.parent, env=env, capture_output=True, text=True, check=True)
    assert Path(check.stdout.strip()).is_relative_to(dkd_site)


def test_a_recipe_distils_with_dkd(dkd_installed, tiny_recipe, tmp_path):
    import kdengine

    tiny_recipe["data"]["params"].update(train_size=1700, val_size=48, test_size=None)
    tiny_recipe["train"]["baseline"] = False
    tiny_recipe["loss"] = [{"name": "dkd.dkd", "weight": 0.5, "params": {"beta": 2.0}},
                           {"name": "cross_entropy", "weight": 0.5}]
    results = kdengine.run(tiny_recipe, output_dir=tmp_path, progress=False)
    losses = results.stage("distilled").history[0].losses
    assert "dkd.dkd" in losses and losses["dkd.dkd"] > 0
