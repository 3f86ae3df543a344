"""The optional extras can be installed together on paper: our declared ranges against the pins
of the newest sglang release (its wheel's Requires-Dist lines, kept in
tests/fixtures/sglang/). A hard ``torch==`` in the library next to sglang's own ``torch==`` pin
could never resolve on a GPU machine. Transitive pins (what litellm or ray require in turn)
are not checked here."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
SGLANG_REQUIRES = REPO / "tests" / "fixtures" / "sglang" / "sglang-0.5.23-requires.txt"
LINUX_X86 = {"sys_platform": "linux", "platform_machine": "x86_64", "platform_system": "Linux",
             "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython"}


def our_requirements(*extras: str) -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    return _by_name(lines)


def sglang_requirements() -> dict[str, Requirement]:
    lines = [line for line in SGLANG_REQUIRES.read_text().splitlines() if line and not line.startswith("#")]
    return _by_name(lines)


def _by_name(lines: list[str]) -> dict[str, Requirement]:
    out: dict[str, Requirement] = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(LINUX_X86 | {"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in out:  # the same package twice: both ranges apply
            out[name].specifier &= req.specifier
        else:
            out[name] = req
    return out


def satisfiable(*specifiers) -> bool:
    """Some version meets every specifier: tried on the versions the specifiers name, and on
    those versions' neighbours (an exclusive bound's nearest admissible releases)."""
    candidates: set[Version] = set()
    for spec in specifiers:
        for clause in spec:
            version = Version(clause.version.replace(".*", ".0"))
            release = list(version.release) + [0] * (3 - len(version.release))
            candidates |= {version, Version(".".join(map(str, [release[0], release[1], release[2] + 1]))),
                           Version(f"{release[0]}.{release[1] + 1}.0"), Version(f"{release[0] + 1}.0.0")}
    if not candidates:
        return True  # no specifier names a version: any release will do
    return any(all(spec.contains(v, prereleases=True) for spec in specifiers) for v in candidates)


def conflicts(ours: dict[str, Requirement], theirs: dict[str, Requirement]) -> list[str]:
    return [f"{name}: ours {ours[name].specifier or 'any'}, sglang's {theirs[name].specifier or 'any'}"
            for name in sorted(set(ours) & set(theirs))
            if not satisfiable(ours[name].specifier, theirs[name].specifier)]


def test_the_sglang_and_gpu_extras_are_satisfiable_against_sglangs_own_pins():
    ours = our_requirements("sglang", "gpu")
    theirs = sglang_requirements()
    assert "torch" in theirs and str(theirs["torch"].specifier).startswith("==")  # sglang pins torch
    assert conflicts(ours, theirs) == []
    assert satisfiable(ours["sglang"].specifier, Requirement("sglang==0.5.23").specifier)


def test_the_check_finds_a_hard_torch_pin_that_sglang_cannot_share():
    theirs = sglang_requirements()
    assert conflicts(_by_name(["torch==2.13.0"]), theirs) == ["torch: ours ==2.13.0, sglang's ==2.14.1"]
    assert conflicts(_by_name(["torch>=2.8"]), theirs) == []


def test_the_sglang_extra_brings_torch_memory_saver():
    assert "torch-memory-saver" in our_requirements("sglang")


def test_the_cpu_quickstart_still_pins_the_cpu_torch_wheel_within_the_library_range():
    constraint = _by_name([line for line in (REPO / "constraints" / "cpu.txt").read_text().splitlines()
                           if line and not line.startswith("#")])["torch"]
    pinned = Version(str(constraint.specifier).removeprefix("=="))
    assert our_requirements()["torch"].specifier.contains(pinned)
    makefile = (REPO / "Makefile").read_text()
    assert "-c constraints/cpu.txt -e '.[test]'" in makefile
