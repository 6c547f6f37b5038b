"""`make setup` keeps a working JupyterLab from the image; a kernel can be registered for a venv."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.setup_plan import plan

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()


def names(lines):
    return {line.split("==")[0].strip() for line in lines if "==" in line}


@pytest.mark.parametrize("have", ["3.6.8", "4.2.5", "4.6.6", "5.0.0"])
def test_an_importable_jupyterlab_that_is_new_enough_is_kept(have):
    install, kept = plan(REQUIREMENTS, lambda name: have)
    assert "jupyterlab" not in names(install) and any(have in note for note in kept)
    assert names(install) == names(REQUIREMENTS) - {"jupyterlab"}  # everything else is still installed


@pytest.mark.parametrize("have", [None, "2.3.2"])
def test_a_missing_or_too_old_jupyterlab_is_installed(have):
    install, kept = plan(REQUIREMENTS, lambda name: have)
    assert "jupyterlab" in names(install) and not kept


def test_make_setup_installs_from_the_filtered_list():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    setup = makefile.split("\nsetup:", 1)[1].split("\n\n", 1)[0]
    assert "helpers.setup_plan requirements.txt build/requirements-setup.txt" in setup
    assert "-r build/requirements-setup.txt" in setup and "-r requirements.txt" not in setup


def test_make_kernel_registers_this_python_as_a_jupyter_kernel(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path)}
    subprocess.run([make, "-s", "kernel", f"PYTHON={sys.executable}"], cwd=REPO, env=env, check=True)
    spec = json.loads((tmp_path / "kernels" / "qwen3vl" / "kernel.json").read_text(encoding="utf-8"))
    assert spec["argv"][0] == sys.executable and spec["display_name"] == "Python (qwen3vl)"
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(listed.stdout)["kernelspecs"]["qwen3vl"]
    assert Path(found["resource_dir"]) == tmp_path / "kernels" / "qwen3vl"
