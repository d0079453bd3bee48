"""Shared fixtures: the reference benchmark data, a clean LLM environment, a fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from openai_server import FakeOpenAIServer

#: The reference data lies next to the repository (``/work/shared/benchmark``; CI has the same layout).
BENCHMARK_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "benchmark"
PROMPTS_FILE = BENCHMARK_DIR / "lmd_benchmark_prompts.txt"
GPT35_REPLIES_FILE = BENCHMARK_DIR / "llm_responses_gpt-3.5-turbo.json"
LLM_ENV_VARS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "LMD_LLM_MODEL", "LMD_LLM_CACHE")


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"reference data {path} not found (expected in shared/benchmark next to the repository)")
    return path


@pytest.fixture(scope="session")
def prompts_file() -> Path:
    """The published 400 benchmark prompts (skips if the shared data is absent)."""
    return _need(PROMPTS_FILE)


@pytest.fixture(scope="session")
def gpt35_replies_file() -> Path:
    """The authors' published GPT-3.5 replies ``{prompt: [reply, ...]}`` (skips if absent)."""
    return _need(GPT35_REPLIES_FILE)


@pytest.fixture(scope="session")
def gpt35_replies(gpt35_replies_file: Path) -> dict[str, list[str]]:
    return json.loads(gpt35_replies_file.read_text(encoding="utf-8"))


@pytest.fixture
def no_llm_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LLM configured from the environment; the default reply cache points into ``tmp_path``."""
    for name in LLM_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "default_cache.json"
    monkeypatch.setenv("LMD_LLM_CACHE", str(cache))
    return cache


@pytest.fixture
def openai_server():
    """A started :class:`FakeOpenAIServer` on 127.0.0.1 (random port); stopped after the test."""
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CUDA, no Apple MPS and no ``$LMD_DEVICE``, wherever the tests run."""
    monkeypatch.delenv("LMD_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
