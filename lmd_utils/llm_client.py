"""Stage 1's production plumbing: asking a real LLM for layouts, and keeping its replies (paper §3.1).

The teaching part of stage 1 (template, parser, scripted sources, dialog) is :mod:`lmd_utils.llm_layouts`; this
module connects it to a live model:

* **Client** (:class:`LLMLayoutSource`, :class:`LLMConfig`): any OpenAI-compatible chat-completions endpoint
  (OpenAI, ollama, vLLM, llama.cpp server), configured from arguments or the environment (``LMD_LLM_MODEL``,
  ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), at the authors' temperature.  Every request is bounded in wall time:
  each try gets ``timeout_s`` seconds in all (a server that dribbles bytes cannot stall it), failed tries are
  retried ``max_retries`` times, then :class:`LLMRequestError`.  Replies that do not parse, or that stage 2
  could not run (an optional ``validate`` hook), are answered with a reprompt, ``parse_attempts`` replies in
  all, then :class:`~lmd_utils.llm_layouts.LayoutParseError` or :class:`~lmd_utils.layout.LayoutError`.
* **Cache** (:class:`ReplyCache`): the replies that passed, on disk, keyed by (template version, model, prompt),
  written atomically under a file lock, so concurrent runs lose nothing; a corrupt file raises
  :class:`CacheCorruptError` and is never overwritten.  As in the authors' code, the k-th request for a prompt
  gets the k-th reply, so reruns are free and reproducible.
* **Choosing a source** (:func:`resolve_source`): the configured LLM, the offline planner or a reply file, for
  the command line, the benchmark and notebook 07.

Every fault of the endpoint ends in :class:`LLMRequestError`, every bad configuration in
:class:`LLMNotConfigured` (or ``ValueError`` for a bad number), each with a short one-line message.  The API key
is only ever handed to the ``openai`` client: it is never written anywhere, neither in the cache nor in
``Layout.meta``, a ``repr`` or an error message (URLs are shown with :func:`redact_url`).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit, urlunsplit

import openai

from .layout import Layout, LayoutError
from .llm_layouts import (
    CAPTION_PREFIX,
    LayoutParseError,
    LayoutSource,
    LayoutTemplate,
    ReplyFileSource,
    first_caption,
    SampleCounter,
    caption_turn,
    load_template,
    reply_to_layout,
)
from .planner import OfflinePlanner
# the cache lives in its own module; its names stay importable from here
from .reply_cache import (CACHE_LOCK_TIMEOUT_S, ENV_CACHE, MAX_MESSAGE_CHARS, CacheCorruptError,  # noqa: F401
                          ReplyCache, _cut, default_cache_path)

#: Sampling temperature the authors use for layout generation.
DEFAULT_TEMPERATURE = 0.25
#: Seconds one try of a request may take in all (connecting, waiting and reading the whole answer).
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
#: How many replies we ask for (the first plus reprompts) before giving up on an unusable answer.
DEFAULT_PARSE_ATTEMPTS = 3
#: The longest wait between two tries, whatever the server's ``Retry-After`` asks (keeps a request bounded).
MAX_BACKOFF_S = 8.0
ENV_API_KEY = "OPENAI_API_KEY"
ENV_BASE_URL = "OPENAI_BASE_URL"
ENV_MODEL = "LMD_LLM_MODEL"
#: Placeholder key for local servers (ollama, vLLM, llama.cpp) that ignore it but the client needs one.
LOCAL_SERVER_KEY = "not-needed"

REPROMPT = (
    "I could not read that answer ({error}). Reply again with only the three lines "
    "'Objects: [...]', 'Background prompt: ...' and 'Negative prompt: ...'."
)
#: The reprompt for a reply that parsed but that stage 2 cannot draw (e.g. a prompt too long for the encoder).
REPROMPT_INVALID = (
    "That layout cannot be drawn ({error}). Reply again with a corrected layout, only the three lines "
    "'Objects: [...]', 'Background prompt: ...' and 'Negative prompt: ...'."
)


# =============================================================================================================
# LLM client
# =============================================================================================================
class LLMNotConfigured(RuntimeError):
    """No usable LLM configuration (a model name and an endpoint or key are needed; the key must be plain)."""


class LLMRequestError(RuntimeError):
    """The LLM endpoint could not be reached, did not answer in time, or answered with an error or garbage
    (after the retries)."""


def redact_url(url: str | None) -> str | None:
    """``url`` without a ``user:password@`` part, safe to show and store."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            netloc = host + (f":{parts.port}" if parts.port else "")
            return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:  # not a URL at all (e.g. a bad port): show nothing of it
        return "<unreadable URL>"
    return url


def _plain_text_problem(value: str) -> str | None:
    """Why ``value`` cannot go into an HTTP header or URL (non-ASCII, whitespace, control characters), or None."""
    if not value.isascii():
        return "contains non-ASCII characters (a typographic quote or dash pasted with it?)"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "contains whitespace or control characters (a line break or space pasted with it?)"
    return None


def _url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be an endpoint's base URL, or None."""
    if not isinstance(url, str):
        return f"is a {type(url).__name__}, not a string"
    if any(c.isspace() or not c.isprintable() for c in url):  # non-ASCII is fine: an international host name
        return "contains whitespace or control characters (a line break or space pasted with it?)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises ValueError)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http:// or https:// URL with a host"
    return None


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask an LLM.  The key is excluded from ``repr`` and never serialised.

    ``timeout_s`` bounds one *try* of a request as a whole (not each network read); a request makes at most
    ``max_retries + 1`` tries, waiting at most :data:`MAX_BACKOFF_S` between them; a layout asks at most
    ``parse_attempts`` requests.  See :meth:`LLMLayoutSource.get_layout` for the resulting bound.
    """

    model: str
    base_url: str | None = None
    api_key: str = field(default=LOCAL_SERVER_KEY, repr=False)
    temperature: float = DEFAULT_TEMPERATURE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    parse_attempts: int = DEFAULT_PARSE_ATTEMPTS

    def __post_init__(self) -> None:
        def count(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not count(self.parse_attempts) or self.parse_attempts < 1:
            raise ValueError(f"need parse_attempts >= 1 (an int), got {self.parse_attempts!r}")
        if not count(self.max_retries) or self.max_retries < 0:
            raise ValueError(f"need max_retries >= 0 (an int), got {self.max_retries!r}")
        if not isinstance(self.timeout_s, (int, float)) or not 0 < self.timeout_s < math.inf:
            raise ValueError(f"need timeout_s > 0 (a finite number of seconds), got {self.timeout_s!r}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"need temperature >= 0 (a finite number), got {self.temperature!r}")
        if not isinstance(self.model, str) or not self.model.strip():
            raise LLMNotConfigured(f"no LLM configured: the model name ({ENV_MODEL} or --llm-model) is empty")
        # The key goes into an HTTP header: check it here, where the message can say what is wrong, rather than
        # letting the HTTP library fail with an "'ascii' codec" error.  Never quote the key itself.
        if not isinstance(self.api_key, str) or not self.api_key:
            raise LLMNotConfigured(f"the API key (${ENV_API_KEY}) is empty; set it, or give a local server's "
                                   f"base URL (${ENV_BASE_URL})")
        problem = _plain_text_problem(self.api_key)
        if problem:
            raise LLMNotConfigured(f"the API key (${ENV_API_KEY}) {problem}; it was not sent — set it again")
        problem = _url_problem(self.base_url) if self.base_url is not None else None
        if problem:
            shown = redact_url(self.base_url) if isinstance(self.base_url, str) else self.base_url
            raise LLMNotConfigured(f"the base URL (${ENV_BASE_URL}) {problem}: {_cut(repr(shown), 80)}")

    def __repr__(self) -> str:
        return (f"LLMConfig(model={self.model!r}, base_url={redact_url(self.base_url)!r}, "
                f"temperature={self.temperature}, timeout_s={self.timeout_s}, max_retries={self.max_retries}, "
                f"parse_attempts={self.parse_attempts})")

    @classmethod
    def from_env(
        cls, model: str | None = None, base_url: str | None = None, api_key: str | None = None, **options: Any
    ) -> "LLMConfig":
        """Arguments first, then ``LMD_LLM_MODEL``, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``.

        An LLM counts as configured when a model name is known and either a key (OpenAI) or a base URL (a local
        OpenAI-compatible server, which gets a placeholder key) is known; otherwise :class:`LLMNotConfigured`.
        """
        model = model or os.environ.get(ENV_MODEL) or None
        base_url = base_url or os.environ.get(ENV_BASE_URL) or None
        api_key = api_key or os.environ.get(ENV_API_KEY) or None
        missing = []
        if not model:
            missing.append(f"a model name ({ENV_MODEL} or --llm-model)")
        if not (api_key or base_url):
            missing.append(f"an endpoint ({ENV_BASE_URL}) or a key ({ENV_API_KEY})")
        if missing:
            raise LLMNotConfigured("no LLM configured: set " + " and ".join(missing))
        return cls(model=model, base_url=base_url, api_key=api_key or LOCAL_SERVER_KEY, **options)


def llm_configured() -> bool:
    """Whether the environment configures an LLM (see :meth:`LLMConfig.from_env`)."""
    try:
        LLMConfig.from_env()
    except (LLMNotConfigured, ValueError):
        return False
    return True


class _NoAnswerInTime(Exception):
    """Internal: one try did not finish within ``timeout_s``."""


#: HTTP statuses worth another try (as the ``openai`` client retries them): timeouts, conflicts, rate limits,
#: server errors.  Others (a bad key, an unknown model, a bad request) would fail the same way again.
_RETRY_STATUSES = frozenset({408, 409, 429})


class LLMLayoutSource:
    """Layouts from an OpenAI-compatible chat-completions endpoint (paper §3.1), with a reply cache.

    ``get_layout(prompt, sample=k)`` returns the k-th cached reply for (template version, model, prompt) and
    asks the LLM only for samples not cached yet.  A reply is used (and cached) only when it parses into a
    :class:`~lmd_utils.layout.Layout` and passes ``validate`` — an optional ``validate(layout)`` that raises
    :class:`~lmd_utils.layout.LayoutError` when stage 2 could not run the layout (say, a prompt longer than the
    text encoder reads); otherwise the LLM gets a reprompt that quotes the problem, up to
    ``config.parse_attempts`` replies in all.  A cached reply that fails (a cache written by an older version)
    is removed from the cache, with a warning, and asked again: a bad reply must not fail every later run.

    Requests: each try runs in a worker thread and is abandoned after ``config.timeout_s`` seconds (its
    connection closed), however the server trickles its bytes; network errors, timeouts, rate limits and server
    errors are tried again ``config.max_retries`` times; then :class:`LLMRequestError`.
    """

    def __init__(
        self,
        config: LLMConfig | None = None,
        cache: ReplyCache | str | Path | None = None,
        template: LayoutTemplate | None = None,
        validate: Callable[[Layout], None] | None = None,
    ) -> None:
        self.config = config or LLMConfig.from_env()
        self.cache = ReplyCache(cache) if isinstance(cache, (str, Path)) else cache
        self.template = template or load_template()
        #: ``validate(layout)`` raises :class:`LayoutError` for a layout stage 2 cannot run (None: no check; any
        #: ValueError it raises counts as such a problem, other exceptions propagate).
        self.validate = validate
        self.name = f"llm {self.config.model}"
        self._where = redact_url(self.config.base_url) or "api.openai.com"
        self._client = self._new_client()
        self._counter = SampleCounter()

    def __repr__(self) -> str:
        return f"LLMLayoutSource({self.config!r}, cache={self.cache!r}, template={self.template.version!r})"

    # -- public ---------------------------------------------------------------------------------------------
    def get_layout(self, prompt: str, sample: int | None = None) -> Layout:
        """The layout for ``prompt`` (one user turn after the template).

        Bounded: each reply it has to ask for takes at most ``parse_attempts`` requests, each request at most
        ``(max_retries + 1) * timeout_s + max_retries * MAX_BACKOFF_S`` seconds.  One call asks one reply, or
        none when cached — more only for a ``sample`` beyond the cached ones (the missing samples are asked).
        """
        return self.continue_dialog([caption_turn(prompt)], sample=sample, prompt=prompt)

    def continue_dialog(
        self, history: Sequence[dict[str, str]], sample: int | None = None, prompt: str = ""
    ) -> Layout:
        """The layout the LLM answers to a dialog ``history`` (user/assistant turns, ending with a user turn)."""
        if not history or history[-1].get("role") != "user":
            raise ValueError("a dialog history must end with a user turn")
        prompt = prompt or first_caption(history)
        key = self._cache_key(history)
        k = self._counter.next(key, sample)
        if self.cache is None:  # nothing to replay: every request is a fresh sample
            _, layout, meta = self._fresh_reply(history, prompt)
        else:
            version, model = self.template.version, self.config.model
            cached = self.cache.get(version, model, key)
            layout, meta = None, {"cached": True}
            while layout is None and k < len(cached):
                try:
                    layout = self._checked_layout(cached[k], prompt)
                except ValueError as e:  # LayoutParseError / LayoutError: a poisoned cache
                    self._forget(key, cached[k], e)
                    cached = self.cache.get(version, model, key)
            while layout is None or len(cached) <= k:  # ask for the samples we do not have yet
                reply, layout, meta = self._fresh_reply(history, prompt)
                self.cache.append(version, model, key, reply)
                cached.append(reply)
        layout.meta.update(meta)
        layout.meta.update(source=self.name, model=self.config.model, base_url=redact_url(self.config.base_url),
                           template_version=self.template.version, sample=k)
        return layout

    # -- internals: replies ---------------------------------------------------------------------------------
    @staticmethod
    def _cache_key(history: Sequence[dict[str, str]]) -> str:
        """The prompt itself for a one-turn request; the JSON list of user turns for a dialog."""
        users = [m["content"] for m in history if m.get("role") == "user"]
        if len(users) == 1 and users[0].startswith(CAPTION_PREFIX):
            return users[0][len(CAPTION_PREFIX):]
        return json.dumps(users, ensure_ascii=False)

    def _checked_layout(self, reply: str, prompt: str) -> Layout:
        """The layout of a reply, if it parses and passes ``validate``; else LayoutParseError / LayoutError."""
        layout = reply_to_layout(reply, prompt=prompt)
        if self.validate is not None:
            self.validate(layout)
        return layout

    def _forget(self, key: str, reply: str, problem: Exception) -> None:
        """Remove a cached reply that cannot be used, and say so once (it is gone afterwards)."""
        assert self.cache is not None
        self.cache.remove(self.template.version, self.config.model, key, reply)
        warnings.warn(f"{self.name}: removed a cached reply for {_cut(key, 60)!r} from {self.cache.path} "
                      f"({type(problem).__name__}: {_cut(problem, 160)}); asking the LLM again", stacklevel=4)

    def _fresh_reply(self, history: Sequence[dict[str, str]], prompt: str) -> tuple[str, Layout, dict[str, Any]]:
        """Ask until a reply parses and passes ``validate`` (bounded); returns it, its layout and request facts."""
        messages = self.template.messages(history=history)
        problem: Exception | None = None
        for attempt in range(1, self.config.parse_attempts + 1):
            text, usage = self._chat(messages)
            try:
                layout = self._checked_layout(text, prompt)
            except ValueError as e:  # LayoutParseError, or LayoutError from the layout or ``validate``
                problem = e
                template = REPROMPT if isinstance(e, LayoutParseError) else REPROMPT_INVALID
                messages = messages + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": template.format(error=_cut(e, 200))},
                ]
                continue
            return text, layout, {"cached": False, "attempts": attempt, "usage": usage}
        error = LayoutParseError if isinstance(problem, LayoutParseError) else LayoutError
        raise error(f"{self.name}: none of {self.config.parse_attempts} replies gave a usable layout; "
                    f"last problem: {type(problem).__name__}: {_cut(problem, 200)}")

    # -- internals: requests --------------------------------------------------------------------------------
    def _new_client(self) -> openai.OpenAI:
        # We retry ourselves (``_chat``): the client's own retries would happen inside one deadline-bound try.
        try:
            return openai.OpenAI(api_key=self.config.api_key, base_url=self.config.base_url,
                                 timeout=self.config.timeout_s, max_retries=0)
        except Exception as e:  # noqa: BLE001 (the client's configuration checks raise various types)
            raise LLMNotConfigured(self._scrub(f"{self.name}: the openai client rejects the configuration "
                                               f"({type(e).__name__}: {e})")) from e

    def _chat(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        """One request: up to ``max_retries + 1`` tries, each bounded by ``timeout_s``; the reply text and usage."""
        tries = self.config.max_retries + 1
        for n in range(1, tries + 1):
            try:
                return self._reply_text(self._try_once(messages))
            except LLMRequestError:
                raise  # a malformed answer: trying again would get the same
            except Exception as e:  # noqa: BLE001 (any fault of the endpoint or the HTTP stack ends here)
                if n == tries or not self._worth_retrying(e):
                    raise self._request_error(e, n) from e
                time.sleep(self._backoff_s(e, n))
        raise AssertionError("unreachable")

    def _try_once(self, messages: list[dict[str, str]]) -> Any:
        """One HTTP try that ends within ``timeout_s``, whatever the server does.

        The HTTP client's own timeout bounds each network read, so a server that sends a byte every few seconds
        would keep a read-bound request alive forever.  So the call runs in a worker thread that we wait for
        ``timeout_s``; if it is still running, we close its HTTP client (which drops the connection and ends the
        worker at its next read) and use a fresh client from then on.
        """
        client, outcome = self._client, {}

        def call() -> None:
            try:
                outcome["response"] = client.chat.completions.create(
                    model=self.config.model, messages=messages, temperature=self.config.temperature)
            except BaseException as e:  # noqa: BLE001 (handed to the waiting thread)
                outcome["error"] = e

        worker = threading.Thread(target=call, name="lmd-llm-request", daemon=True)
        worker.start()
        worker.join(self.config.timeout_s)
        if worker.is_alive():
            self._client = self._new_client()
            threading.Thread(target=client.close, name="lmd-llm-close", daemon=True).start()
            raise _NoAnswerInTime()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["response"]

    def _reply_text(self, response: Any) -> tuple[str, dict[str, Any]]:
        """The message text and token usage of a chat completion; LLMRequestError if it is not one."""
        choices = getattr(response, "choices", None)
        message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
        if message is None or not hasattr(message, "content"):
            raise LLMRequestError(self._scrub(f"{self.name} at {self._where}: the response has no choices with a "
                                              f"message (not a chat completion: {_cut(repr(response), 120)})"))
        content = message.content
        if content is None:  # e.g. a refusal: reprompted like any reply without a layout
            content = ""
        if not isinstance(content, str):
            raise LLMRequestError(self._scrub(f"{self.name} at {self._where}: the message content is a "
                                              f"{type(content).__name__}, not text: {_cut(repr(content), 120)}"))
        usage = getattr(response, "usage", None)
        try:
            usage = usage.model_dump() if hasattr(usage, "model_dump") else {}
        except Exception:  # noqa: BLE001 (token counts are informative only)
            usage = {}
        return content, usage if isinstance(usage, dict) else {}

    @staticmethod
    def _worth_retrying(error: Exception) -> bool:
        if isinstance(error, (_NoAnswerInTime, openai.APIConnectionError)):  # includes APITimeoutError
            return True
        status = getattr(error, "status_code", None) if isinstance(error, openai.APIStatusError) else None
        return isinstance(status, int) and (status in _RETRY_STATUSES or status >= 500)

    @staticmethod
    def _backoff_s(error: Exception, n: int) -> float:
        """Seconds to wait before try ``n + 1``: the server's ``Retry-After``, else 0.5 s, 1 s, 2 s … (jittered);
        never more than :data:`MAX_BACKOFF_S`."""
        headers = getattr(getattr(error, "response", None), "headers", None) or {}
        wait = None
        for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
            try:
                wait = float(headers.get(name)) * scale
                break
            except (TypeError, ValueError):  # absent, or an HTTP date: use the default
                continue
        if wait is None or not math.isfinite(wait):
            wait = 0.5 * 2 ** (n - 1) * (1 - 0.25 * random.random())
        return min(max(wait, 0.0), MAX_BACKOFF_S)

    def _request_error(self, error: Exception, tries: int) -> LLMRequestError:
        """A one-line LLMRequestError naming the endpoint, what went wrong and how often it was tried."""
        if isinstance(error, (_NoAnswerInTime, openai.APITimeoutError)):
            what = f"Timeout: the endpoint did not answer within {self.config.timeout_s:g} s"
        else:
            what = f"{type(error).__name__}: {_cut(error, 200) or 'no details'}"
        tried = f" (after {tries} tries)" if tries > 1 else ""
        return LLMRequestError(_cut(self._scrub(f"{self.name} at {self._where}: {what}{tried}")))

    def _scrub(self, text: str) -> str:
        """``text`` without the API key (a server may echo it in an error message)."""
        key = self.config.api_key
        return text.replace(key, "<API key>") if len(key) >= 8 and key != LOCAL_SERVER_KEY else text


# =============================================================================================================
# Choosing a source
# =============================================================================================================
def resolve_source(
    source: "LayoutSource | str | Path | None" = None,
    model: str | None = None,
    base_url: str | None = None,
    cache: ReplyCache | str | Path | bool | None = None,
    timeout_s: float | None = None,
    planner: OfflinePlanner | None = None,
) -> tuple[LayoutSource, str]:
    """A layout source from a name and a sentence saying which one and why (for the CLI's stderr).

    ``"planner"``: the offline planner; ``"llm"``: the configured LLM (raises :class:`LLMNotConfigured`);
    a path: a reply file; ``None``: the LLM if configured, else the planner.  ``cache`` (LLM sources only):
    ``None`` → :func:`default_cache_path`, ``False`` → no cache, else a path or a :class:`ReplyCache`.
    ``timeout_s`` (LLM sources only): seconds one try of a request may take in all (``LLMConfig.timeout_s``;
    ``None`` keeps the default).  ``planner``: the offline planner to use when the choice is the planner
    (default: :class:`~lmd_utils.planner.OfflinePlanner` for Stable Diffusion; the toy model's is
    :func:`~lmd_utils.toyworld.model.toy_planner`).
    """
    if cache is None or cache is True:
        cache = default_cache_path()
    elif cache is False:
        cache = None
    options: dict[str, Any] = {} if timeout_s is None else {"timeout_s": timeout_s}
    if source is not None and not isinstance(source, (str, Path)):
        return source, f"layout source: {source.name}"
    if source is None:
        try:
            config = LLMConfig.from_env(model=model, base_url=base_url, **options)
        except LLMNotConfigured as e:
            return planner or OfflinePlanner(), f"layout source: offline planner ({e})"
        llm = LLMLayoutSource(config, cache=cache)
        return llm, f"layout source: {llm.name} (configured from the environment)"
    if str(source) == "planner":
        return planner or OfflinePlanner(), "layout source: offline planner"
    if str(source) == "llm":
        config = LLMConfig.from_env(model=model, base_url=base_url, **options)
        llm = LLMLayoutSource(config, cache=cache)
        return llm, f"layout source: {llm.name}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"layout source {str(source)!r} is neither 'planner', 'llm' nor a reply file")
    replies = ReplyFileSource(path)
    return replies, f"layout source: {replies.name}"


__all__ = [
    "DEFAULT_TEMPERATURE", "DEFAULT_TIMEOUT_S", "DEFAULT_MAX_RETRIES", "DEFAULT_PARSE_ATTEMPTS", "MAX_BACKOFF_S",
    "CACHE_LOCK_TIMEOUT_S", "ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "ENV_CACHE", "CacheCorruptError",
    "ReplyCache", "default_cache_path", "LLMNotConfigured", "LLMRequestError", "redact_url", "LLMConfig",
    "llm_configured", "LLMLayoutSource", "resolve_source",
]
