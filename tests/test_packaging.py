"""What a user installs: the version in one place, the licence and type marker shipped, and the
lower bounds of pyproject.toml equal to the versions .ci/run tests in its second environment."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

import seqjax

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lower_bounds() -> dict[str, Version]:
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"].values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    bounds = {}
    for text in requirements:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                bounds[requirement.name.lower()] = Version(spec.version)
    return bounds


def pins() -> dict[str, Version]:
    lines = (ROOT / ".ci" / "lower-bounds.txt").read_text().splitlines()
    found = (re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip()) for line in lines
             if line.strip() and not line.startswith("#"))  # fmt: skip
    return {m.group(1).lower(): Version(m.group(2)) for m in found if m}


def test_every_runtime_dependency_is_tested_at_its_lower_bound():
    bounds, pinned = lower_bounds(), pins()
    runtime = [Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]]
    assert set(runtime) <= set(pinned), set(runtime) - set(pinned)
    for name, version in pinned.items():
        if name == "jaxlib":  # jax names its own jaxlib
            assert version == pinned["jax"]
            continue
        assert bounds[name] == version, (
            f"{name}: pyproject says >={bounds[name]}, CI tests {version}"
        )


def test_the_version_is_written_once():
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    assert importlib.metadata.version("seqjax") == seqjax.__version__


def test_the_licence_and_the_type_marker_ship():
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert (ROOT / "seqjax" / "py.typed").exists()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["seqjax"]
    assert set(PYPROJECT["project"]["license-files"]) == {"LICENSE", "seqjax/tasks/data/SOURCES.md"}


def test_test_only_packages_are_not_runtime_dependencies():
    runtime = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]}
    assert not runtime & {"chex", "pytest", "matplotlib", "ruff", "mkdocs", "torch"}
