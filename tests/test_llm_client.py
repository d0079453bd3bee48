"""Stage 1's plumbing: reply cache, configuration, the LLM client through a real HTTP server, choosing a source."""

from __future__ import annotations

import json

import pytest

from lmd_utils.llm_client import (
    CacheCorruptError,
    LLMConfig,
    LLMLayoutSource,
    LLMNotConfigured,
    LLMRequestError,
    ReplyCache,
    llm_configured,
    redact_url,
    resolve_source,
)
from lmd_utils.llm_layouts import LayoutParseError, LayoutSession, ReplyFileSource, load_template
from lmd_utils.planner import OfflinePlanner
from openai_server import HTTPError, Reply

pytestmark = pytest.mark.usefixtures("no_llm_env")

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
DOG_REPLY = "Objects: [('a dog', [100, 200, 150, 120])]\nBackground prompt: A park\nNegative prompt:"


# =============================================================================================================
# Cache
# =============================================================================================================
def test_cache_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "sub" / "cache.json"
    cache = ReplyCache(path)
    assert cache.get("v1", "m", "p") == []
    cache.append("v1", "m", "p", "r1")
    cache.append("v1", "m", "p", "r2")
    cache.append("v1", "other", "p", "r3")
    assert ReplyCache(path).get("v1", "m", "p") == ["r1", "r2"]
    assert ReplyCache(path).get("v2", "m", "p") == []
    # no temporary files left (the lock file stays: deleting it would race with another process taking it)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cache.json", "cache.json.lock"]
    # another process wrote meanwhile: both survive
    ReplyCache(path).append("v1", "m", "q", "rq")
    cache.append("v1", "m", "p", "r4")
    assert ReplyCache(path).get("v1", "m", "q") == ["rq"]
    assert ReplyCache(path).get("v1", "m", "p") == ["r1", "r2", "r4"]


@pytest.mark.parametrize("content", ["{broken", json.dumps({"format": "other"}), json.dumps([1, 2])])
def test_corrupt_cache_raises_and_is_never_overwritten(tmp_path, content):
    path = tmp_path / "cache.json"
    path.write_text(content)
    with pytest.raises(CacheCorruptError, match="left untouched"):
        ReplyCache(path)
    assert path.read_text() == content


def test_cache_corrupted_during_a_run_is_not_overwritten(tmp_path):
    path = tmp_path / "cache.json"
    cache = ReplyCache(path)
    cache.append("v1", "m", "p", "r1")
    path.write_text("{garbage")
    with pytest.raises(CacheCorruptError):
        cache.append("v1", "m", "p", "r2")
    assert path.read_text() == "{garbage"


# =============================================================================================================
# Configuration
# =============================================================================================================
def test_nothing_configured_raises_a_clear_error():
    assert not llm_configured()
    with pytest.raises(LLMNotConfigured, match="LMD_LLM_MODEL.*OPENAI_BASE_URL.*OPENAI_API_KEY"):
        LLMConfig.from_env()
    with pytest.raises(LLMNotConfigured, match="model name"):
        LLMConfig.from_env(api_key=SECRET)


def test_config_from_env_and_key_never_in_repr(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("LMD_LLM_MODEL", "gpt-test")
    assert llm_configured()
    cfg = LLMConfig.from_env()
    assert (cfg.model, cfg.base_url, cfg.api_key, cfg.temperature) == ("gpt-test", None, SECRET, 0.25)
    assert SECRET not in repr(cfg) and SECRET not in str(cfg)
    local = LLMConfig.from_env(model="llama3.1", base_url="http://localhost:11434/v1", api_key="")
    assert local.base_url == "http://localhost:11434/v1"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert LLMConfig.from_env(base_url="http://localhost:8000/v1").api_key == "not-needed"
    assert redact_url("http://user:pw@host:8000/v1") == "http://host:8000/v1"
    with pytest.raises(ValueError):
        LLMConfig(model="m", parse_attempts=0)


# =============================================================================================================
# LLM through a real HTTP server
# =============================================================================================================
def _llm(server, tmp_path, **options) -> LLMLayoutSource:
    cfg = LLMConfig(model="test-model", base_url=server.base_url, api_key=SECRET,
                    **{"timeout_s": 5.0, "max_retries": 2, **options})
    return LLMLayoutSource(cfg, cache=tmp_path / "cache.json")


def test_llm_request_carries_template_model_temperature_and_key(openai_server, tmp_path):
    openai_server.queue(Reply(DOG_REPLY))
    src = _llm(openai_server, tmp_path)
    layout = src.get_layout("a dog in a park")
    assert layout.phrases == ["a dog"] and layout.background == "A park"
    assert layout.boxes[0].to_xywh() == [100, 200, 150, 120]
    assert layout.meta["source"] == "llm test-model" and layout.meta["cached"] is False
    assert layout.meta["usage"]["completion_tokens"] == len(DOG_REPLY.split())
    (req,) = openai_server.requests
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "test-model" and req.body["temperature"] == 0.25
    assert req.messages == load_template().messages("a dog in a park")
    assert req.authorization == f"Bearer {SECRET}"


def test_k_th_request_gets_the_k_th_cached_reply(openai_server, tmp_path):
    r1, r2 = DOG_REPLY, DOG_REPLY.replace("100, 200", "10, 20")
    openai_server.queue(Reply(r1), Reply(r2))
    src = _llm(openai_server, tmp_path)
    assert src.get_layout("p").boxes[0].to_xywh()[:2] == [100, 200]
    assert src.get_layout("p").boxes[0].to_xywh()[:2] == [10, 20]
    assert len(openai_server.requests) == 2
    again = _llm(openai_server, tmp_path)  # a new run: replays the cache, no requests
    assert [again.get_layout("p").meta["reply"] for _ in range(2)] == [r1, r2]
    assert again.get_layout("p", sample=0).meta["cached"] is True
    assert len(openai_server.requests) == 2
    cached = json.loads((tmp_path / "cache.json").read_text())
    assert cached["replies"]["v1"]["test-model"]["p"] == [r1, r2]


def test_http_500_is_retried_then_succeeds(openai_server, tmp_path):
    openai_server.queue(HTTPError(500), HTTPError(503), Reply(DOG_REPLY))
    layout = _llm(openai_server, tmp_path, max_retries=2).get_layout("a dog")
    assert layout.phrases == ["a dog"] and len(openai_server.requests) == 3


def test_http_errors_beyond_the_retries_raise_llm_request_error(openai_server, tmp_path):
    openai_server.queue(HTTPError(500), HTTPError(500))
    with pytest.raises(LLMRequestError, match="InternalServerError") as info:
        _llm(openai_server, tmp_path, max_retries=1).get_layout("a dog")
    assert SECRET not in str(info.value)
    assert not (tmp_path / "cache.json").exists()


def test_timeout_is_retried(openai_server, tmp_path):
    openai_server.queue(Reply(DOG_REPLY, delay_s=1.5), Reply(DOG_REPLY))
    layout = _llm(openai_server, tmp_path, timeout_s=0.3, max_retries=1).get_layout("a dog")
    assert layout.phrases == ["a dog"] and len(openai_server.requests) == 2


def test_timeout_without_retries_raises(openai_server, tmp_path):
    openai_server.queue(Reply(DOG_REPLY, delay_s=1.5))
    with pytest.raises(LLMRequestError, match="Timeout"):
        _llm(openai_server, tmp_path, timeout_s=0.3, max_retries=0).get_layout("a dog")


def test_unparseable_reply_is_reprompted(openai_server, tmp_path):
    openai_server.queue(Reply("Sure, a dog in a park sounds lovely!"), Reply(DOG_REPLY))
    layout = _llm(openai_server, tmp_path).get_layout("a dog")
    assert layout.phrases == ["a dog"] and layout.meta["attempts"] == 2
    first, second = openai_server.requests
    assert second.messages[:-2] == first.messages
    assert second.messages[-2] == {"role": "assistant", "content": "Sure, a dog in a park sounds lovely!"}
    assert second.messages[-1]["role"] == "user" and "could not read" in second.messages[-1]["content"]
    # only the reply that parsed is cached
    assert ReplyCache(tmp_path / "cache.json").get("v1", "test-model", "a dog") == [DOG_REPLY]


def test_replies_that_never_parse_raise_and_cache_nothing(openai_server, tmp_path):
    openai_server.queue(*(Reply(f"no layout {i}") for i in range(3)))
    with pytest.raises(LayoutParseError, match="none of 3 replies"):
        _llm(openai_server, tmp_path, parse_attempts=3).get_layout("a dog")
    assert len(openai_server.requests) == 3
    assert not (tmp_path / "cache.json").exists()


def test_empty_choices_raise_llm_request_error(openai_server, tmp_path, monkeypatch):
    src = _llm(openai_server, tmp_path)
    monkeypatch.setattr(openai_server, "_completion", lambda body, content: {"id": "x", "choices": []})
    openai_server.queue(Reply(DOG_REPLY))
    with pytest.raises(LLMRequestError, match="no choices"):
        src.get_layout("a dog")


def test_api_key_never_reaches_cache_repr_or_layout(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("LMD_LLM_MODEL", "test-model")
    openai_server.queue(Reply(DOG_REPLY))
    src, note = resolve_source("llm", cache=tmp_path / "cache.json")
    layout = src.get_layout("a dog")
    assert openai_server.requests[0].authorization == f"Bearer {SECRET}"
    for text in (repr(src), str(src.__dict__.get("config")), note, layout.to_json(), repr(layout),
                 (tmp_path / "cache.json").read_text()):
        assert SECRET not in text


def test_replaying_recorded_replies_through_the_server(openai_server, tmp_path, gpt35_replies):
    prompt = "A realistic photo of a scene with two chairs"
    openai_server.recorded = {prompt: gpt35_replies[prompt]}
    src = _llm(openai_server, tmp_path)
    layouts = [src.get_layout(prompt) for _ in range(2)]
    assert [l.meta["reply"] for l in layouts] == gpt35_replies[prompt]
    assert len(openai_server.requests) == 2


# =============================================================================================================
# Dialog and other languages
# =============================================================================================================
def test_three_round_dialog_sends_the_whole_history(openai_server, tmp_path):
    r1 = "Objects: [('a dog', [200, 250, 120, 100])]\nBackground prompt: A park\nNegative prompt:"
    r2 = ("Objects: [('a dog', [180, 220, 200, 160]), ('a cat', [40, 260, 110, 100])]\n"
          "Background prompt: A park\nNegative prompt:")
    r3 = ("Objects: [('a dog', [180, 220, 200, 160]), ('a cat', [40, 260, 110, 100])]\n"
          "Background prompt: A snowy park\nNegative prompt:")
    openai_server.queue(Reply(r1), Reply(r2), Reply(r3))
    session = LayoutSession(_llm(openai_server, tmp_path), seed=7)
    l1 = session.ask("a dog in a park")
    l2 = session.ask("make the dog bigger and put a cat on its left")
    l3 = session.ask("make it snow")
    assert session.seed == 7 and session.layout is l3 and session.layouts == [l1, l2, l3]
    assert l1.phrases == ["a dog"] and l2.phrases == ["a dog", "a cat"] and l3.background == "A snowy park"
    assert l2.boxes[0].area > l1.boxes[0].area and l2.boxes[1].center[0] < l2.boxes[0].center[0]
    assert [l.meta["round"] for l in session.layouts] == [0, 1, 2]
    assert all(l.prompt == "a dog in a park" for l in session.layouts)

    base = len(load_template().messages())
    sent = [req.messages[base:] for req in openai_server.requests]
    assert sent[0] == [{"role": "user", "content": "Caption: a dog in a park"}]
    assert sent[1] == sent[0] + [
        {"role": "assistant", "content": r1},
        {"role": "user", "content": "Follow-up instruction: make the dog bigger and put a cat on its left"},
    ]
    assert sent[2] == sent[1] + [
        {"role": "assistant", "content": r2},
        {"role": "user", "content": "Follow-up instruction: make it snow"},
    ]
    assert session.history == sent[2] + [{"role": "assistant", "content": r3}]
    # the dialog is cached under its user turns: a replay asks nothing
    replay = LayoutSession(_llm(openai_server, tmp_path))
    for text in ("a dog in a park", "make the dog bigger and put a cat on its left", "make it snow"):
        replay.ask(text)
    assert len(openai_server.requests) == 3 and replay.layout.background == "A snowy park"



@pytest.mark.parametrize("prompt", ["공원에 있는 고양이 두 마리", "桌子上有三个红苹果", "Un perro negro junto a una bicicleta roja"])
def test_non_english_prompt_gets_english_layout(openai_server, tmp_path, prompt):
    reply = "Objects: [('a cat', [40, 200, 180, 160]), ('a cat', [280, 200, 180, 160])]\nBackground prompt: A park\n" \
            "Negative prompt:"
    openai_server.queue(Reply(reply))
    layout = _llm(openai_server, tmp_path).get_layout(prompt)
    (req,) = openai_server.requests
    assert "in English" in req.messages[0]["content"]  # the instruction is in the system message
    assert req.messages[-1]["content"] == f"Caption: {prompt}"
    assert layout.phrases == ["a cat", "a cat"] and layout.background == "A park" and layout.prompt == prompt


# =============================================================================================================
# Choosing a source
# =============================================================================================================
def test_resolve_source(tmp_path, gpt35_replies_file, monkeypatch):
    from lmd_utils.toyworld.model import toy_planner

    src, note = resolve_source(None)
    assert isinstance(src, OfflinePlanner) and "offline planner" in note and "LMD_LLM_MODEL" in note
    assert isinstance(resolve_source("planner")[0], OfflinePlanner)
    toy = toy_planner()  # the planner a model asks for is the one used, whether named or the fallback
    assert resolve_source("planner", planner=toy)[0] is toy and resolve_source(None, planner=toy)[0] is toy
    assert isinstance(resolve_source(str(gpt35_replies_file))[0], ReplyFileSource)
    with pytest.raises(LLMNotConfigured):
        resolve_source("llm")
    with pytest.raises(FileNotFoundError, match="neither 'planner', 'llm' nor a reply file"):
        resolve_source(tmp_path / "missing.json")
    monkeypatch.setenv("LMD_LLM_MODEL", "m")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    src, note = resolve_source(None, cache=False)
    assert isinstance(src, LLMLayoutSource) and src.cache is None and "configured from the environment" in note
