"""The wheel ships chatcore only: no top-level "adapters" or "entrypoints" to shadow PyPI packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_beside_pypi_entrypoints(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("chatcore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"chatcore", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "chatcore/adapters/sqlalchemy/migrations/script.py.mako" in names
    assert "chatcore/py.typed" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import entrypoints, chatcore.entrypoints.cli, chatcore.adapters.sqlalchemy.tables;"
        "assert hasattr(entrypoints, 'get_group_all'), entrypoints.__file__;"
        "assert chatcore.__file__.startswith(sys.argv[1]), chatcore.__file__;"
        "print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
