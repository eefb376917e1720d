"""The code is formatted and linted as pyproject.toml's [tool.ruff] says (both tiers run this)."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    command = shutil.which("ruff")
    assert command is not None, "ruff is a test dependency: pip install -e '.[test]'"
    return subprocess.run([command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_passes() -> None:
    done = _ruff("check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_every_file_as_it_is() -> None:
    done = _ruff("format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_a_badly_formatted_file(tmp_path: Path) -> None:
    """The check above can fail: the same configuration rejects an unformatted, unused import."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\nx = {  'a':1 }\n")
    assert (
        subprocess.run([shutil.which("ruff") or "ruff", "check", "."], cwd=tmp_path, capture_output=True).returncode
        != 0
    )
    assert (
        subprocess.run(
            [shutil.which("ruff") or "ruff", "format", "--check", "."], cwd=tmp_path, capture_output=True
        ).returncode
        != 0
    )
