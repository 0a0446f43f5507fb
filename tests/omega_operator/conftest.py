"""Shared spec fixtures for the operator's pure tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def example() -> dict[str, Any]:
    """examples/omegavlm.yaml as a dict (a fresh copy per test)."""
    return copy.deepcopy(yaml.safe_load((REPO / "examples" / "omegavlm.yaml").read_text()))


@pytest.fixture
def minimal_spec() -> dict[str, Any]:
    return {
        "model": {"name": "tiny", "uri": "file:///models/tiny"},
        "image": {"repository": "reg.example/omega-vlm-server", "tag": "v1"},
    }
