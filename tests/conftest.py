"""Shared pytest fixtures: keep every test's MLflow store and runs out of the project root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clbench_cache")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
              _session_cache: Path) -> Iterator[None]:
    # fast tests never write to ~/.cache; slow tests reuse the real cache (SmolLM2 conversion)
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("CLBENCH_CACHE", str(_session_cache))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    yield
