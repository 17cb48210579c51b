"""The version the processes report is the project's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import zeroslee


def test_the_code_version_is_pyprojects() -> None:
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert zeroslee.__version__ == project["project"]["version"]
