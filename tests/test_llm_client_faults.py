"""Faults of stage 1's plumbing, one class per section: concurrent cache writers, replies stage 2 cannot run (and
caches poisoned by them), endpoints that dribble, and endpoints or configurations that answer garbage.

The rule they check: every user mistake, bad reply or endpoint fault ends in a typed exception with a one-line
message, within seconds, with nothing lost and nothing wrong cached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import filelock
import pytest

from lmd_utils import llm_client, reply_cache
from lmd_utils.layout import Layout, LayoutError
from lmd_utils.llm_client import (
    MAX_BACKOFF_S,
    MAX_MESSAGE_CHARS,
    CacheCorruptError,
    LLMConfig,
    LLMLayoutSource,
    LLMNotConfigured,
    LLMRequestError,
    ReplyCache,
    resolve_source,
)
from lmd_utils.llm_layouts import LayoutParseError
from openai_server import Dribble, HTTPError, Raw, Reply

pytestmark = pytest.mark.usefixtures("no_llm_env")

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-1234567890"
GOOD = "Objects: [('a dog', [100, 200, 150, 120])]\nBackground prompt: A park\nNegative prompt:"
#: Parses, but its background is too long for the (pretend) text encoder: a reply that must not be cached.
LONG_BACKGROUND = ("Objects: [('a dog', [100, 200, 150, 120])]\nBackground prompt: A park"
                   + " with tall old trees" * 20 + "\nNegative prompt:")


def too_long(layout: Layout) -> None:
    """A stand-in for stage 2's check (the real one counts CLIP tokens): at most 30 words per box prompt."""
    words = len(layout.background.split())
    if words > 30:
        raise LayoutError(f"the background prompt has {words} words, more than the 30 the text encoder reads")


def _llm(server, tmp_path, validate=None, **options) -> LLMLayoutSource:
    cfg = LLMConfig(model="test-model", base_url=server.base_url, api_key=SECRET,
                    **{"timeout_s": 5.0, "max_retries": 0, **options})
    return LLMLayoutSource(cfg, cache=tmp_path / "cache.json", validate=validate)


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and len(text) <= MAX_MESSAGE_CHARS + 200, text
    assert SECRET not in text
    return text


# =============================================================================================================
# 1. Concurrent cache writers
# =============================================================================================================
# One interpreter imports lmd_utils once (seconds), then forks the writers: real processes, each with its own
# cache object and lock file descriptor, released together so that their writes overlap.
WRITERS = textwrap.dedent("""
    import os, sys, time, traceback
    from lmd_utils.llm_client import ReplyCache
    path, procs, appends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    start = time.time() + 0.5
    pids = []
    for i in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                cache = ReplyCache(path)
                time.sleep(max(start - time.time(), 0))
                for j in range(appends):
                    cache.append("v1", "m", "p", f"w{i}-{j}")
                    cache.append("v1", "m", f"own {i}", f"{j}")
            except BaseException:
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        pids.append(pid)
    sys.exit(any(os.waitpid(pid, 0)[1] for pid in pids))
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the writers are forked")
def test_concurrent_writer_processes_lose_nothing(tmp_path):
    path, procs, appends = tmp_path / "cache.json", 3, 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", WRITERS, str(path), str(procs), str(appends)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    cache = ReplyCache(path)
    shared = cache.get("v1", "m", "p")
    assert sorted(shared) == sorted(f"w{i}-{j}" for i in range(procs) for j in range(appends))  # all 120
    for i in range(procs):  # each writer's replies in its own order
        assert [r for r in shared if r.startswith(f"w{i}-")] == [f"w{i}-{j}" for j in range(appends)]
        assert cache.get("v1", "m", f"own {i}") == [str(j) for j in range(appends)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json", "cache.json.lock"]  # no temporary files


def test_a_write_waits_for_the_lock_then_merges(tmp_path):
    path = tmp_path / "cache.json"
    ReplyCache(path).append("v1", "m", "p", "r1")
    other = ReplyCache(path)  # another run, read before the write below
    holder = filelock.FileLock(str(path) + ".lock")
    holder.acquire()  # another process in the middle of its read-merge-write
    writer = threading.Thread(target=other.append, args=("v1", "m", "p", "r3"))
    writer.start()
    time.sleep(0.3)
    assert writer.is_alive(), "the write did not wait for the lock"
    ReplyCache(path)._write({"v1": {"m": {"p": ["r1", "r2"]}}})  # what the lock holder writes
    holder.release()
    writer.join(5)
    assert ReplyCache(path).get("v1", "m", "p") == ["r1", "r2", "r3"]


def test_a_lock_held_too_long_raises_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(reply_cache, "CACHE_LOCK_TIMEOUT_S", 0.2)
    path = tmp_path / "cache.json"
    cache = ReplyCache(path)
    cache.append("v1", "m", "p", "r1")
    before = path.read_text()
    with filelock.FileLock(str(path) + ".lock"):
        with pytest.raises(CacheCorruptError, match="stayed locked") as info:
            cache.append("v1", "m", "p", "r2")
    _one_line(info.value)
    assert path.read_text() == before


def test_an_unwritable_cache_path_raises_a_cache_error(tmp_path):
    (tmp_path / "a file").write_text("not a folder")
    cache = ReplyCache(tmp_path / "a file" / "cache.json")
    with pytest.raises(CacheCorruptError, match="another cache path"):
        cache.append("v1", "m", "p", "r1")


def test_remove_deletes_every_copy_and_keeps_the_rest(tmp_path):
    path = tmp_path / "cache.json"
    cache = ReplyCache(path)
    for reply in ("bad", "good", "bad"):
        cache.append("v1", "m", "p", reply)
    cache.append("v1", "m", "q", "bad")  # the same text under another prompt stays
    stale = ReplyCache(path)  # another run that read the file before the removal
    assert cache.remove("v1", "m", "p", "bad") == 2
    assert cache.remove("v1", "m", "p", "absent") == 0 and cache.remove("v2", "x", "y", "bad") == 0
    assert ReplyCache(path).get("v1", "m", "p") == ["good"] and ReplyCache(path).get("v1", "m", "q") == ["bad"]
    stale.append("v1", "m", "r", "new")  # its stale copy must not bring the removed replies back
    assert ReplyCache(path).get("v1", "m", "p") == ["good"]
    cache.remove("v1", "m", "p", "good")
    cache.remove("v1", "m", "q", "bad")
    cache.remove("v1", "m", "r", "new")
    assert json.loads(path.read_text())["replies"] == {}  # empty keys are pruned


# =============================================================================================================
# 2. Replies stage 2 cannot run: validated before they are cached
# =============================================================================================================
def test_a_reply_failing_validate_is_reprompted_and_only_the_good_one_cached(openai_server, tmp_path):
    openai_server.queue(Reply(LONG_BACKGROUND), Reply(GOOD))
    layout = _llm(openai_server, tmp_path, validate=too_long).get_layout("a dog")
    assert layout.background == "A park" and layout.meta["attempts"] == 2 and layout.meta["cached"] is False
    first, second = openai_server.requests
    assert second.messages[:-2] == first.messages
    assert second.messages[-2] == {"role": "assistant", "content": LONG_BACKGROUND}
    reprompt = second.messages[-1]["content"]
    assert "cannot be drawn" in reprompt and "more than the 30" in reprompt
    assert ReplyCache(tmp_path / "cache.json").get("v1", "test-model", "a dog") == [GOOD]


def test_validate_can_be_set_after_construction(openai_server, tmp_path):
    openai_server.queue(Reply(LONG_BACKGROUND), Reply(GOOD))
    src = _llm(openai_server, tmp_path)
    src.validate = too_long
    assert src.get_layout("a dog").background == "A park" and len(openai_server.requests) == 2


def test_replies_that_never_validate_raise_layout_error_and_cache_nothing(openai_server, tmp_path):
    def wordy(layout: Layout) -> None:  # a long problem is cut in the reprompt and the error
        raise LayoutError("cannot run: " + "a very long explanation " * 200)

    openai_server.queue(*(Reply(GOOD) for _ in range(3)))
    with pytest.raises(LayoutError, match="llm test-model: none of 3 replies.*cannot run") as info:
        _llm(openai_server, tmp_path, validate=wordy, parse_attempts=3).get_layout("a dog")
    assert not isinstance(info.value, LayoutParseError)
    _one_line(info.value)
    assert len(openai_server.requests) == 3
    assert all(len(req.messages[-1]["content"]) < 500 for req in openai_server.requests[1:])
    assert not (tmp_path / "cache.json").exists()


def test_a_mix_of_problems_raises_the_last_ones_type(openai_server, tmp_path):
    openai_server.queue(Reply(LONG_BACKGROUND), Reply("no layout here"))
    with pytest.raises(LayoutParseError, match="none of 2 replies"):
        _llm(openai_server, tmp_path, validate=too_long, parse_attempts=2).get_layout("a dog")
    assert not (tmp_path / "cache.json").exists()


@pytest.mark.parametrize("poison", [LONG_BACKGROUND, "an older parser's reply: no layout"])
def test_a_poisoned_cache_entry_is_removed_and_replaced(openai_server, tmp_path, poison):
    path = tmp_path / "cache.json"
    old = ReplyCache(path)  # written by an older version that cached without checking
    old.append("v1", "test-model", "a dog", poison)
    old.append("v1", "test-model", "a cat", GOOD.replace("dog", "cat"))
    openai_server.queue(Reply(GOOD))
    with pytest.warns(UserWarning, match="removed a cached reply for 'a dog'.*asking the LLM again"):
        layout = _llm(openai_server, tmp_path, validate=too_long).get_layout("a dog")
    assert layout.background == "A park" and layout.meta["cached"] is False and len(openai_server.requests) == 1
    assert ReplyCache(path).get("v1", "test-model", "a dog") == [GOOD]
    assert ReplyCache(path).get("v1", "test-model", "a cat") == [GOOD.replace("dog", "cat")]  # untouched
    # the next run replays the good reply: no request, no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        again = _llm(openai_server, tmp_path, validate=too_long).get_layout("a dog")
    assert again.meta["cached"] is True and len(openai_server.requests) == 1


def test_a_poisoned_sample_makes_room_for_the_next_cached_one(openai_server, tmp_path):
    path = tmp_path / "cache.json"
    for reply in (LONG_BACKGROUND, GOOD):
        ReplyCache(path).append("v1", "test-model", "a dog", reply)
    with pytest.warns(UserWarning, match="removed a cached reply"):
        layout = _llm(openai_server, tmp_path, validate=too_long).get_layout("a dog")
    assert layout.meta["reply"] == GOOD and layout.meta["cached"] is True and not openai_server.requests


# =============================================================================================================
# 3. The timeout bounds the whole request, not each read
# =============================================================================================================
@pytest.mark.parametrize("headers_too", [False, True], ids=["body dribbles", "headers dribble"])
def test_a_dribbling_server_is_cut_at_the_deadline(openai_server, tmp_path, headers_too):
    openai_server.queue(Dribble(GOOD, interval_s=0.3, headers_too=headers_too))
    start = time.monotonic()
    with pytest.raises(LLMRequestError, match="did not answer within 1 s") as info:
        _llm(openai_server, tmp_path, timeout_s=1, max_retries=0).get_layout("a dog")
    assert time.monotonic() - start < 3  # before the fix: every read got 1 s, so ~100 s for this reply
    _one_line(info.value)
    assert len(openai_server.requests) == 1 and not (tmp_path / "cache.json").exists()


def test_retries_after_a_deadline_are_bounded_and_use_a_fresh_connection(openai_server, tmp_path):
    openai_server.queue(Dribble(GOOD), Dribble(GOOD))
    start = time.monotonic()
    with pytest.raises(LLMRequestError, match="did not answer within 0.5 s.*after 2 tries"):
        _llm(openai_server, tmp_path, timeout_s=0.5, max_retries=1).get_layout("a dog")
    assert time.monotonic() - start < 2 * 0.5 + MAX_BACKOFF_S
    assert len(openai_server.requests) == 2
    openai_server.queue(Dribble(GOOD), Reply(GOOD))  # the try after an abandoned one succeeds
    assert _llm(openai_server, tmp_path, timeout_s=0.5, max_retries=1).get_layout("a cat").phrases == ["a dog"]


def test_resolve_source_takes_a_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv("LMD_LLM_MODEL", "m")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert resolve_source("llm", cache=False, timeout_s=2.5)[0].config.timeout_s == 2.5
    assert resolve_source(None, cache=False, timeout_s=3)[0].config.timeout_s == 3
    assert resolve_source("llm", cache=False)[0].config.timeout_s == llm_client.DEFAULT_TIMEOUT_S
    for bad in (0, -1, float("nan"), float("inf"), "5"):
        with pytest.raises(ValueError, match="timeout_s"):
            resolve_source("llm", cache=False, timeout_s=bad)


# =============================================================================================================
# 4. Endpoint faults and bad configurations end in typed errors
# =============================================================================================================
@pytest.mark.parametrize("action", [
    Raw(b"\xff\xfe\xfa not UTF-8 \x80"),
    Raw(b"{not json"),
    Raw(b""),
    Raw(b"[]"),
    Raw(b"null"),
    Raw(b'"a string"'),
    Raw(b'{"choices": "abc"}'),
    Raw(b'{"choices": [{"message": "hi"}]}'),
    Raw(b'{"choices": [{"message": {"content": 42}}]}'),
    Raw(b'{"choices": [{"message": {"content": ["a", "b"]}}]}'),
    Raw(b"<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html"),
    Raw(json.dumps({"choices": [{"message": {"content": GOOD}}]}).encode(), cut_after=20),
    HTTPError(500, "x" * 100_000),
    HTTPError(401, f"Incorrect API key provided: {SECRET}. You can find your API key at ..."),
], ids=lambda a: type(a).__name__ + ":" + (a.body[:24].decode("latin-1") if isinstance(a, Raw) else str(a.status)))
def test_endpoint_faults_raise_llm_request_error(openai_server, tmp_path, action):
    openai_server.queue(action)
    start = time.monotonic()
    with pytest.raises(LLMRequestError) as info:
        _llm(openai_server, tmp_path).get_layout("a dog")
    assert time.monotonic() - start < 5
    text = _one_line(info.value)  # one line, short, without the key
    assert text.startswith("llm test-model at http://127.0.0.1:")
    assert not (tmp_path / "cache.json").exists()


def test_a_key_echoed_by_the_server_is_not_in_the_error_and_not_retried(openai_server, tmp_path):
    openai_server.queue(HTTPError(401, f"Incorrect API key provided: {SECRET}"))
    with pytest.raises(LLMRequestError, match="AuthenticationError.*<API key>") as info:
        _llm(openai_server, tmp_path, max_retries=2).get_layout("a dog")
    assert SECRET not in str(info.value) and len(openai_server.requests) == 1


def test_usage_in_an_odd_shape_is_ignored(openai_server, tmp_path):
    openai_server.queue(Raw(json.dumps({"choices": [{"message": {"content": GOOD}}], "usage": "lots"}).encode()))
    layout = _llm(openai_server, tmp_path).get_layout("a dog")
    assert layout.phrases == ["a dog"] and layout.meta["usage"] == {}


def test_a_missing_content_is_reprompted_like_an_unreadable_reply(openai_server, tmp_path):
    openai_server.queue(Raw(b'{"choices": [{"message": {"role": "assistant", "content": null}}]}'), Reply(GOOD))
    assert _llm(openai_server, tmp_path).get_layout("a dog").meta["attempts"] == 2


@pytest.mark.parametrize("error", [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                                   ValueError("a malformed body"), json.JSONDecodeError("Expecting value", "x", 0),
                                   KeyError("choices"), TypeError("NoneType is not subscriptable")])
def test_any_error_of_the_http_stack_becomes_llm_request_error(openai_server, tmp_path, monkeypatch, error):
    src = _llm(openai_server, tmp_path, max_retries=2)

    def create(**_):
        raise error

    monkeypatch.setattr(src._client.chat.completions, "create", create)
    with pytest.raises(LLMRequestError, match=type(error).__name__) as info:
        src.get_layout("a dog")
    _one_line(info.value)


def test_an_unreachable_endpoint_raises_quickly(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, timeout_s=2, max_retries=1)
    start = time.monotonic()
    with pytest.raises(LLMRequestError, match="APIConnectionError.*after 2 tries") as info:
        LLMLayoutSource(cfg, cache=tmp_path / "cache.json").get_layout("a dog")
    assert time.monotonic() - start < 4
    _one_line(info.value)


BAD_KEYS = {
    "sk-tëst-1234567890": "non-ASCII",
    "sk-“quoted”-1234567890": "non-ASCII",
    "sk-test-1234567890\n": "whitespace or control",
    " sk-test-1234567890": "whitespace or control",
    "sk-test 1234567890": "whitespace or control",
    "sk-test-\x001234567890": "whitespace or control",
    "sk-test-\t1234567890": "whitespace or control",
    "sk-test-\x1b[31m1234567890": "whitespace or control",
}


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_bad_key_raises_llm_not_configured_without_showing_it(key, monkeypatch):
    with pytest.raises(LLMNotConfigured, match=rf"API key \(\$OPENAI_API_KEY\) contains {BAD_KEYS[key]}") as info:
        LLMConfig(model="m", api_key=key)
    assert key not in str(info.value) and key.strip() not in str(info.value)
    if "\x00" in key:  # the environment cannot hold a NUL
        return
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("LMD_LLM_MODEL", "m")
    with pytest.raises(LLMNotConfigured, match="API key") as info:
        resolve_source("llm", cache=False)
    assert key.strip() not in str(info.value)


@pytest.mark.parametrize("url", ["not a url", "localhost:8000/v1", "ftp://host/v1", "http://", "http://h:99999/v1",
                                 "http://host/v1\n", "http://ho st/v1"])
def test_a_bad_base_url_raises_llm_not_configured(url):
    with pytest.raises(LLMNotConfigured, match=r"base URL \(\$OPENAI_BASE_URL\)") as info:
        LLMConfig(model="m", base_url=url)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("options", [{"timeout_s": float("nan")}, {"timeout_s": float("inf")}, {"timeout_s": 0},
                                     {"max_retries": -1}, {"max_retries": 1.5}, {"parse_attempts": 0},
                                     {"temperature": float("nan")}, {"temperature": -1}])
def test_bad_numbers_raise_value_error(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        LLMConfig(model="m", **options)


def test_an_empty_model_or_key_raises_llm_not_configured():
    with pytest.raises(LLMNotConfigured, match="model name"):
        LLMConfig(model=" ")
    with pytest.raises(LLMNotConfigured, match="API key .* is empty"):
        LLMConfig(model="m", api_key="")
