"""The package installs anywhere: data ships inside the wheel, and the repository URL is named in one place."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import set_repo_url  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _mentions(root: Path) -> dict[str, list[str]]:
    """Every ``github.com/OWNER/NAME`` and Colab ``github/OWNER/NAME`` in the files that name the repository."""
    found = {}
    for path in set_repo_url.files_naming_the_repository(root):
        text = path.read_text(encoding="utf-8")
        found[path.relative_to(root).as_posix()] = re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+?)(?:/blob|\.git|[\s\"'`)\\]|$)", text)
    return found


def _check_agree(root: Path) -> str:
    slug = set_repo_url.current_slug(root)
    assert f"Repository: `{slug}`" in (root / "notebooks" / "README.md").read_text(encoding="utf-8")
    for name, slugs in _mentions(root).items():
        assert slugs or name == "notebooks/README.md", f"{name} names no repository"
        assert set(slugs) <= {slug}, f"{name} names {sorted(set(slugs))}, pyproject.toml {slug}"
    for path in NOTEBOOKS:
        nb = json.loads((root / "notebooks" / path.name).read_text(encoding="utf-8"))
        badge, setup = "".join(nb["cells"][0]["source"]), "\n".join(
            "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert f"colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}" in badge
        assert f"https://github.com/{slug}" in setup, f"{path.name}: the Colab cell installs from another URL"
    return slug


def test_readme_badges_and_notebooks_name_the_repository_of_pyproject():
    _check_agree(ROOT)


def test_set_repo_url_rewrites_every_mention_for_a_fork(tmp_path):
    copy = tmp_path / "repo"
    (copy / "notebooks").mkdir(parents=True)
    for path in set_repo_url.files_naming_the_repository(ROOT):
        shutil.copy(path, copy / path.relative_to(ROOT))
    changed = set_repo_url.set_slug("my-course/lmd-fork", copy)
    assert len(changed) == 3 + len(NOTEBOOKS)
    assert _check_agree(copy) == "my-course/lmd-fork"
    with pytest.raises(SystemExit, match="not OWNER/NAME"):
        set_repo_url.set_slug("https://github.com/x", copy)


def test_the_wheel_holds_the_package_data(tmp_path):
    """Built offline from this tree: every file of data/ (templates, toy-world model) lands in lmd_utils/data/."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("lmd_utils-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [p.relative_to(ROOT / "data").as_posix() for p in (ROOT / "data").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
    missing = [f for f in data if f"lmd_utils/data/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "lmd_utils").rglob("*.py")]
    assert not [m for m in modules if m not in names], "a module is missing from the wheel (pyproject packages)"


@pytest.mark.slow
def test_a_fresh_venv_installs_the_wheel_and_runs_the_demo_from_elsewhere(tmp_path):
    """The README's instructor route: ``make wheel``, then ``pip install`` it in a new environment."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True)
    (wheel,) = (tmp_path / "dist").glob("lmd_utils-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    torch_spec = f"torch=={importlib.metadata.version('torch').split('+')[0]}"  # the torch of this machine
    subprocess.run([str(py), "-m", "pip", "install", "-q", torch_spec], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run([str(py), "-m", "lmd_utils", "demo", "--out", "x.png"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / "x.png").stat().st_size > 10_000
    where = subprocess.run([str(py), "-c", "import lmd_utils; print(lmd_utils.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert str(venv) in where, f"imported {where} instead of the installed wheel"
