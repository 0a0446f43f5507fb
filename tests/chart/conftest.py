"""Fixtures of the chart tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.release import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random VLM checkpoint for the OmegaVLMs the installed operator reconciles."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-vlm"))
