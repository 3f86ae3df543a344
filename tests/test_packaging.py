"""Every package folder under plugins/ and userrl_core/ is listed in pyproject's `packages`
(a folder missing there is absent from a wheel: an ImportError only users would see)."""

from __future__ import annotations

import tomllib

from fixtures.distributions import REPO_ROOT

PACKAGE_ROOTS = {"userrl_core": REPO_ROOT / "userrl_core", "userrl_plugins": REPO_ROOT / "plugins"}


def listed_packages() -> set[str]:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return set(config["tool"]["setuptools"]["packages"])


def package_folders() -> set[str]:
    found = set()
    for name, root in PACKAGE_ROOTS.items():
        for init in root.rglob("*.py"):
            folder = init.parent
            if "__pycache__" in folder.parts:
                continue
            found.add(".".join([name, *folder.relative_to(root).parts]))
    return found


def test_every_package_folder_is_listed():
    missing = package_folders() - listed_packages()
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_every_listed_package_exists():
    assert listed_packages() - package_folders() == set()


def test_package_dir_maps_plugins_to_userrl_plugins():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["setuptools"]["package-dir"] == {"userrl_plugins": "plugins"}
