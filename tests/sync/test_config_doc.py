"""docs/config.md is generated from sync/config.py and must be current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sync.config import Config, env_name
from sync.config_doc import render

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_committed_reference_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/config.md is out of date: run `python -m sync.config_doc > docs/config.md`"
    )


def test_every_key_is_documented_with_its_variable_and_description() -> None:
    text = render()
    defaults = Config()
    for f in dataclasses.fields(Config):
        section = getattr(defaults, f.name)
        if dataclasses.is_dataclass(section):
            for sub in dataclasses.fields(section):
                row = _row(text, f"`{f.name}.{sub.name}`")
                assert f"`{env_name(f.name, sub.name)}`" in row
                assert sub.metadata["doc"].split("<")[0] in row
        else:
            row = _row(text, f"`{f.name}`")
            assert f"`{env_name(None, f.name)}`" in row
            assert f.metadata["doc"].split("<")[0] in row


def test_types_and_defaults_are_shown() -> None:
    text = render()
    assert "| `keyspaces.port` | integer | `9142` |" in text
    assert '| `keyspaces.auth` | one of `"sigv4"`, `"password"`, `"none"` | `"sigv4"` |' in text
    assert "| `follow.metrics_port` | integer, optional | unset |" in text
    assert '| `opensearch.hosts` | list of strings | `["https://localhost:9200"]` |' in text
    # A default computed on the machine (host-pid) must not make the doc differ per machine.
    assert "| `state.worker_id` | string | computed (see description) |" in text


def _row(text: str, key: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| {key} |")]
    assert len(rows) == 1, key
    return rows[0]
