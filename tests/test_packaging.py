"""A wheel built from the tree holds every module and every data file the code opens."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_module_and_data_file(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "results", "*.egg-info", "build", "__pycache__", ".peers"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("privlearn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = REPO / "privlearn"
    expected = {
        p.relative_to(REPO).as_posix()
        for p in pkg.rglob("*")
        if p.is_file() and p.suffix in (".py", ".json") and "__pycache__" not in p.parts
    }
    assert expected <= names, sorted(expected - names)
    for d in pkg.rglob("*"):
        if d.is_dir() and d.name != "__pycache__":
            assert (d / "__init__.py").exists(), f"{d} is not a package"
    # the installed copy finds its data files (no editable install behind it)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    code = (
        "import privlearn, pathlib;"
        f"assert pathlib.Path(privlearn.__file__).is_relative_to({str(target)!r}),"
        " privlearn.__file__;"
        "from importlib.resources import files;"
        "d = files('privlearn.he');"
        "assert (d / 'noise_calibration.json').is_file() and (d / 'time_models.json').is_file()"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=tmp_path, env={"PYTHONPATH": str(target)}
    )
