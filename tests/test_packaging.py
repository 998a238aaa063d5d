"""pyproject.toml lists every package and entry point: nothing is left out of a wheel."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_names(directory: Path, prefix: str) -> set[str]:
    names = set()
    for init in directory.rglob("__init__.py"):
        relative = init.parent.relative_to(directory)
        names.add(".".join([prefix, *relative.parts]))
    return names


def test_every_sub_package_is_listed() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = package_names(ROOT / "core", "mailgate") | package_names(
        ROOT / "plugins", "mailgate.plugins"
    )
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"


def test_every_entry_point_loads_a_plugin_class() -> None:
    entry_points = PYPROJECT["project"]["entry-points"]["mailgate.plugins"]
    assert {"relay_control", "add_header"} <= set(entry_points)
    for name, target in entry_points.items():
        module_name, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        assert isinstance(cls, type), f"{name}: {target} is not a class"


def test_console_script() -> None:
    assert PYPROJECT["project"]["scripts"]["mailgate"] == "mailgate.cli:main"


def test_py_typed_ships_with_both_packages() -> None:
    # PEP 561: without the marker, a plugin author's mypy ignores mailgate's annotations.
    assert (ROOT / "core" / "py.typed").is_file()
    assert (ROOT / "plugins" / "py.typed").is_file()
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["mailgate"]
    assert "py.typed" in package_data["mailgate.plugins"]


def test_the_wheel_holds_py_typed(tmp_path: Path) -> None:
    # Built from a copy, so the build leaves nothing in the source tree.
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("core", "plugins"):
        shutil.copytree(ROOT / part, source / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("mailgate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"mailgate/py.typed", "mailgate/plugins/py.typed"} <= names


def test_both_packages_are_marked_typed() -> None:
    """``py.typed`` (PEP 561): mypy checks the installed `mailgate`, as it will for a plugin."""
    for package in ("mailgate", "mailgate.plugins"):
        assert resources.files(package).joinpath("py.typed").is_file(), package
