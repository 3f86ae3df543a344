"""Every package folder under plugins/ and userrl_core/ is listed in pyproject's `packages`
(a folder missing there is absent from a wheel: an ImportError only users would see), data
folders included (setuptools warns, pages of it, about a data folder it could import but was
not told about), and `pip install -e .` is quiet."""

from __future__ import annotations

import tomllib

import pytest

from fixtures.distributions import REPO_ROOT

PACKAGE_ROOTS = {"userrl_core": REPO_ROOT / "userrl_core", "userrl_plugins": REPO_ROOT / "plugins"}


def listed_packages() -> set[str]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(config["tool"]["setuptools"]["packages"])


def package_folders() -> set[str]:
    """Folders holding code or data files, and the folders above them (what setuptools sees
    as importable)."""
    found = set()
    for name, root in PACKAGE_ROOTS.items():
        for path in root.rglob("*"):
            parts = path.parent.relative_to(root).parts
            if not path.is_file() or "__pycache__" in parts or any(p.startswith(".") for p in parts):
                continue
            for depth in range(len(parts) + 1):
                found.add(".".join([name, *parts[:depth]]))
    return found


def test_every_package_folder_is_listed():
    missing = package_folders() - listed_packages()
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_every_listed_package_exists():
    assert listed_packages() - package_folders() == set()


def test_package_dir_maps_plugins_to_userrl_plugins():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["setuptools"]["package-dir"] == {"userrl_plugins": "plugins"}


def test_editable_install_prints_no_setuptools_warnings(tmp_path):
    """`pip install -e .` of this checkout (build isolation off: the venv's setuptools) shows
    neither the pages about data folders missing from `packages` nor the deprecated license
    table. (setuptools' one-paragraph note that an editable install of a remapped package folder
    - plugins/ as userrl_plugins - uses an import finder is printed for any such layout.)"""
    import subprocess
    import sys

    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("the SPDX license string needs setuptools >= 77 (pyproject's build requirement)")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO_ROOT),
         "--target", str(tmp_path / "target")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for noise in ("absent from the `packages` configuration", "Package would be ignored", "deprecated",
                  "SetuptoolsDeprecationWarning"):
        assert noise not in output, output[-3000:]
