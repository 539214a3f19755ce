"""The ks2os command as a user meets it: a real process, its exit code and its stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

import sync


def ks2os(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_and_help(tmp_path: Path) -> None:
    version = ks2os("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"ks2os {sync.__version__}"
    helped = ks2os("--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "usage: ks2os" in helped.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = one_line_error(ks2os("bogus", cwd=tmp_path))
    assert "invalid choice: 'bogus'" in line


def test_unknown_flag_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = one_line_error(ks2os("--frobnicate", "config", "check", cwd=tmp_path))
    assert "--frobnicate" in line


def test_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = one_line_error(ks2os("--config", "nope.toml", "config", "check", cwd=tmp_path))
    assert "nope.toml not found" in line


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("[state]\nlease_seconds = 'long'\n")
    line = one_line_error(ks2os("config", "check", cwd=tmp_path))
    assert "state.lease_seconds must be an integer" in line


def test_config_check_prints_effective_config_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("[opensearch]\nauth = 'basic'\nusername = 'u'\n")
    result = ks2os("config", "check", cwd=tmp_path, env={"KS2OS_OPENSEARCH_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    assert shown["opensearch"]["username"] == "u"
    assert shown["opensearch"]["password"] == "***"
    assert "s3cret" not in result.stdout + result.stderr
