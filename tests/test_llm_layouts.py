"""Stage 1: template, reply parser, reply file, cache, LLM client (through a real HTTP server), dialog."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from lmd_utils.layout import LayoutWarning
from lmd_utils.llm_layouts import (
    TEMPLATE_VERSION,
    CacheCorruptError,
    LayoutParseError,
    LayoutSession,
    LLMConfig,
    LLMLayoutSource,
    LLMNotConfigured,
    LLMRequestError,
    MissingReplyError,
    ReplyCache,
    ReplyFileSource,
    format_layout_reply,
    layout_to_reply,
    llm_configured,
    load_template,
    parse_layout_reply,
    redact_url,
    reply_to_layout,
    resolve_source,
    scoring_objects,
    show_template,
)
from lmd_utils.planner import OfflinePlanner
from openai_server import HTTPError, Reply

pytestmark = pytest.mark.usefixtures("no_llm_env")

SECRET = "sk-test-DO-NOT-LEAK-1234567890"
DOG_REPLY = "Objects: [('a dog', [100, 200, 150, 120])]\nBackground prompt: A park\nNegative prompt:"


# =============================================================================================================
# Template
# =============================================================================================================
def test_template_states_task_canvas_rules_and_examples():
    t = load_template()
    assert t.version == TEMPLATE_VERSION == "v1"
    system = t.system
    for needle in ("512", "[x, y, w, h]", "top-left", "A realistic scene", "One box for each single object",
                   "Every foreground object", "negative prompt", "English", "Objects: [(",
                   "Background prompt:", "Negative prompt:"):
        assert needle in system, needle
    assert len(t.examples) >= 7
    users = [u for u, _ in t.examples]
    assert sum(u.startswith("Caption: ") for u in users) >= 7
    assert any("without" in u for u in users)
    assert any(re.search(r"[áéíóúñ]", u) for u in users)  # a non-English caption
    assert any(u.startswith("Follow-up instruction: ") for u in users)


def test_template_examples_parse_and_stay_inside_the_canvas():
    t = load_template()
    parsed = [parse_layout_reply(a) for _, a in t.examples]
    for p in parsed:
        for name, (x, y, w, h) in p.objects:
            assert name.startswith(("a ", "an ")), name
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 512 and y + h <= 512, (name, x, y, w, h)
    assert any(p.negative for p in parsed)  # negation goes to the negative prompt
    assert any(len(p.objects) == 3 and len({n for n, _ in p.objects}) <= 2 for p in parsed)  # counts
    # the non-English example answers in English
    spanish = next(p for (u, _), p in zip(t.examples, parsed) if "perro" in u)
    assert all(re.fullmatch(r"[a-z ]+", n) for n, _ in spanish.objects)
    assert "dog" in " ".join(n for n, _ in spanish.objects)


def test_messages_are_system_then_example_turns_then_caption():
    t = load_template()
    msgs = t.messages("A photo of a cat")
    assert msgs[0]["role"] == "system" and msgs[0]["content"] == t.system
    roles = [m["role"] for m in msgs[1:]]
    assert roles == ["user", "assistant"] * len(t.examples) + ["user"]
    assert msgs[-1] == {"role": "user", "content": "Caption: A photo of a cat"}
    text = show_template("A photo of a cat")
    assert text.startswith("LMD layout template v1") and text.endswith("Caption: A photo of a cat")
    assert text.count("--- assistant ---") == len(t.examples)


def test_broken_template_file_is_rejected(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("[user]\nCaption: x\n")
    with pytest.raises(ValueError, match="must start with a \\[system\\]"):
        load_template(path=bad)
    bad.write_text("[system]\nhi\n[user]\nCaption: x\n")
    with pytest.raises(ValueError, match="alternate"):
        load_template(path=bad)


# =============================================================================================================
# Parser
# =============================================================================================================
def test_parser_reads_all_published_replies(gpt35_replies):
    replies = [r for rs in gpt35_replies.values() for r in rs]
    assert len(replies) == 400
    parsed = [parse_layout_reply(r) for r in replies]
    assert sum(len(p.objects) for p in parsed) == sum(r.count("', [") for r in replies)
    assert sum(not p.objects for p in parsed) == 96
    assert all(p.background for p in parsed)
    one = parse_layout_reply(gpt35_replies["A realistic photo of a scene with two dogs"][0])
    assert one.objects == [("a dog", [82.0, 120.0, 163.0, 195.0]), ("a dog", [267.0, 120.0, 163.0, 195.0])]
    assert one.background == "A realistic scene" and one.negative == ""
    neg = parse_layout_reply(gpt35_replies["A realistic photo of a scene without books"][0])
    assert neg.objects == [] and neg.negative == "books"


TOLERATED = {
    "code fence and prose": (
        "Sure! Here is the layout:\n```python\nObjects: [('a red car', [10, 20, 30, 40])]\n"
        "Background prompt: A street\nNegative prompt: None\n```\nLet me know if you want changes.",
        [("a red car", [10, 20, 30, 40])], "A street", ""),
    "no Objects prefix, missing negative": (
        "[('a cat', [1, 2, 3, 4]), ('a dog', [5.5, 6, 7, 8e1])]\nBackground prompt: A room",
        [("a cat", [1, 2, 3, 4]), ("a dog", [5.5, 6, 7, 80])], "A room", ""),
    "JSON lists and trailing commentary": (
        'Objects: [["a cup", [0, 0, 100, 100]], ["a bowl", [200, 200, 50, 60]],]\n'
        "Background prompt: A kitchen.\nNegative prompt: blurry\n\nI put the cup in the corner.",
        [("a cup", [0, 0, 100, 100]), ("a bowl", [200, 200, 50, 60])], "A kitchen.", "blurry"),
    "dict items": (
        'Objects: [{"name": "a bird", "bounding_box": [1, 2, 3, 4]}, {"caption": "a tree", "box": '
        '{"x": 5, "y": 6, "width": 7, "height": 8}}]\nBackground prompt: "A forest"\nNegative prompt: N/A',
        [("a bird", [1, 2, 3, 4]), ("a tree", [5, 6, 7, 8])], "A forest", ""),
    "whole JSON answer": (
        '{"objects": [["a boat", [10, 10, 90, 40]]], "background_prompt": "A lake", "negative_prompt": "none"}',
        [("a boat", [10, 10, 90, 40])], "A lake", ""),
    "apostrophe, markdown bold, bracket in prose": (
        "Layout [512x512]:\n**Objects:** [('a man's hat', (1, 2, 3, 4))]\n**Background prompt:** A shop\n"
        "**Negative prompt:** hands",
        [("a man's hat", [1, 2, 3, 4])], "A shop", "hands"),
    "empty list, no background": ("Objects: []\nNegative prompt: dogs", [], None, "dogs"),
    "prompts before the list": (
        "Background prompt: A desert\nNegative prompt: water\n[('a camel', [50, 100, 300, 250])]",
        [("a camel", [50, 100, 300, 250])], "A desert", "water"),
}


@pytest.mark.parametrize("case", list(TOLERATED), ids=list(TOLERATED))
def test_parser_tolerates_common_deviations(case):
    text, objects, background, negative = TOLERATED[case]
    p = parse_layout_reply(text)
    assert p.objects == [(n, [float(v) for v in b]) for n, b in objects]
    assert (p.background, p.negative) == (background, negative)


@pytest.mark.parametrize(
    "text, quoted",
    [
        ("I am sorry, I cannot draw that.", "I am sorry"),
        ("Objects: [('a cat', [1, 2, 3])]\nBackground prompt: x", "is not [x, y, w, h]"),
        ("Objects: [('a cat', [1, 2, 3, 4])", "expected ','"),
        ("Objects: [('a cat, [1, 2, 3, 4])]", "unterminated string"),
        ("Objects: [('a cat', ['one', 2, 3, 4])]", "'one' is not a number"),
        ("Objects: " + "[" * 30, "nested deeper"),
        ("Objects: [{'label': 'a cat'}]", "needs a name and a bounding_box"),
    ],
)
def test_parser_errors_quote_the_text(text, quoted):
    with pytest.raises(LayoutParseError) as info:
        parse_layout_reply(text)
    assert quoted in str(info.value)
    assert len(str(info.value)) < 300  # quotes are truncated


def test_long_garbage_is_rejected_quickly_with_a_short_message():
    with pytest.raises(LayoutParseError) as info:
        parse_layout_reply("['" + "[" * 50_000)
    assert len(str(info.value)) < 300
    with pytest.raises(LayoutParseError, match="too long"):
        parse_layout_reply("x" * 300_000)
    with pytest.raises(TypeError):
        parse_layout_reply(None)  # type: ignore[arg-type]


def test_format_and_parse_round_trip():
    objects = [("a man's hat", [1, 2.5, 3, 4]), ('a "quoted" sign', [0, 0, 512, 10])]
    text = format_layout_reply(objects, "A street", "")
    assert text.splitlines()[1:] == ["Background prompt: A street", "Negative prompt:"]
    p = parse_layout_reply(text)
    assert p.objects == [(n, [float(v) for v in b]) for n, b in objects]


def test_reply_to_layout_clips_but_keeps_raw_boxes_for_scoring():
    text = "[('a car', [400, 100, 200, 100]), ('a wall', [0, 0, 512, 512])]\nBackground prompt: \nNegative prompt: x"
    with pytest.warns(LayoutWarning):
        layout = reply_to_layout(text, prompt="a car")
    assert layout.prompt == "a car" and layout.background == "A realistic scene" and layout.negative == "x"
    assert layout.phrases == ["a car"] and layout.boxes[0].x1 == 1.0  # clipped at the right edge
    assert layout.meta["reply"] == text
    assert scoring_objects(layout) == [("a car", [400.0, 100.0, 200.0, 100.0]), ("a wall", [0.0, 0.0, 512.0, 512.0])]
    assert layout_to_reply(layout).startswith("Objects: [('a car', [400, 100, 112, 100])]")


# =============================================================================================================
# Reply file
# =============================================================================================================
def test_reply_file_gives_the_kth_reply_to_the_kth_request(tmp_path):
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"two dogs": ["[('a dog', [0, 0, 10, 10])]", "[('a dog', [5, 5, 10, 10])]"]}))
    src = ReplyFileSource(path)
    first, second = src.get_layout("two dogs"), src.get_layout("two dogs")
    assert scoring_objects(first)[0][1] == [0, 0, 10, 10] and scoring_objects(second)[0][1] == [5, 5, 10, 10]
    assert (first.meta["sample"], second.meta["sample"]) == (0, 1)
    with pytest.raises(MissingReplyError, match="has 2 replies"):
        src.get_layout("two dogs")
    assert scoring_objects(src.get_layout("two dogs", sample=1))[0][1] == [5, 5, 10, 10]
    with pytest.raises(MissingReplyError, match="no reply for"):
        src.get_layout("a cat")
    src.reset()
    assert src.get_layout("two dogs").meta["sample"] == 0


def test_reply_file_validation(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ReplyFileSource(bad)
    bad.write_text(json.dumps({"p": "not a list"}))
    with pytest.raises(ValueError, match="list of reply strings"):
        ReplyFileSource(bad)


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
    assert [p.name for p in path.parent.iterdir()] == ["cache.json"]  # no temporary files left
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


def test_planner_session_does_one_round_only():
    session = LayoutSession(OfflinePlanner())
    assert session.ask("a cat and a dog").phrases == ["a cat", "a dog"]
    assert session.history[1]["content"].startswith("Objects: [('a cat', [")
    with pytest.raises(TypeError, match="cannot follow instructions"):
        session.ask("make the cat bigger")


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
    src, note = resolve_source(None)
    assert isinstance(src, OfflinePlanner) and "offline planner" in note and "LMD_LLM_MODEL" in note
    assert isinstance(resolve_source("planner")[0], OfflinePlanner)
    assert isinstance(resolve_source(str(gpt35_replies_file))[0], ReplyFileSource)
    with pytest.raises(LLMNotConfigured):
        resolve_source("llm")
    with pytest.raises(FileNotFoundError, match="neither 'planner', 'llm' nor a reply file"):
        resolve_source(tmp_path / "missing.json")
    monkeypatch.setenv("LMD_LLM_MODEL", "m")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    src, note = resolve_source(None, cache=False)
    assert isinstance(src, LLMLayoutSource) and src.cache is None and "configured from the environment" in note


def test_layout_warnings_are_warnings_not_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LayoutWarning)
        with pytest.raises(LayoutWarning):
            reply_to_layout("[('a', [0, 0, 0, 5])]")
