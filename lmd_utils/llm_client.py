"""Stage 1's production plumbing: asking a real LLM for layouts, and keeping its replies (paper §3.1).

The teaching part of stage 1 (template, parser, scripted sources, dialog) is :mod:`lmd_utils.llm_layouts`; this
module connects it to a live model:

* **Client** (:class:`LLMLayoutSource`, :class:`LLMConfig`): any OpenAI-compatible chat-completions endpoint
  (OpenAI, ollama, vLLM, llama.cpp server), configured from arguments or the environment (``LMD_LLM_MODEL``,
  ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``), at the authors' temperature.  Every request is bounded: a timeout
  and a number of retries for the network (then :class:`LLMRequestError`), a number of reprompts for replies
  that do not parse (then :class:`~lmd_utils.llm_layouts.LayoutParseError`).
* **Cache** (:class:`ReplyCache`): the replies that parsed, on disk, keyed by (template version, model, prompt),
  written atomically; a corrupt file raises :class:`CacheCorruptError` and is never overwritten.  As in the
  authors' code, the k-th request for a prompt gets the k-th reply, so reruns are free and reproducible.
* **Choosing a source** (:func:`resolve_source`): the configured LLM, the offline planner or a reply file, for
  the command line, the benchmark and notebook 07.

The API key is only ever handed to the ``openai`` client: it is never written anywhere, neither in the cache nor
in ``Layout.meta``, a ``repr`` or a log message (URLs are shown with :func:`redact_url`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import openai

from .layout import Layout
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
    parse_layout_reply,
    reply_to_layout,
)
from .planner import OfflinePlanner

#: Sampling temperature the authors use for layout generation.
DEFAULT_TEMPERATURE = 0.25
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
#: How many replies we ask for (the first plus reprompts) before giving up on an unparseable answer.
DEFAULT_PARSE_ATTEMPTS = 3
ENV_API_KEY = "OPENAI_API_KEY"
ENV_BASE_URL = "OPENAI_BASE_URL"
ENV_MODEL = "LMD_LLM_MODEL"
ENV_CACHE = "LMD_LLM_CACHE"
#: Placeholder key for local servers (ollama, vLLM, llama.cpp) that ignore it but the client needs one.
LOCAL_SERVER_KEY = "not-needed"

REPROMPT = (
    "I could not read that answer ({error}). Reply again with only the three lines "
    "'Objects: [...]', 'Background prompt: ...' and 'Negative prompt: ...'."
)


# =============================================================================================================
# Reply cache
# =============================================================================================================
class CacheCorruptError(RuntimeError):
    """The cache file exists but cannot be read; it is left untouched."""


class ReplyCache:
    """Parsed LLM replies on disk, keyed by (template version, model, prompt), a list of replies per key.

    The file is ``{"format": ..., "replies": {version: {model: {prompt: [reply, ...]}}}}``.  Only replies that
    parsed are stored.  Writes go to a temporary file that then replaces the cache (``os.replace``), and merge
    with what is on disk, so an interrupted or concurrent run loses nothing.  A corrupt file raises
    :class:`CacheCorruptError` and is never overwritten.
    """

    FORMAT = "lmd_utils reply cache 1"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data = self._read()

    def __repr__(self) -> str:
        return f"ReplyCache({str(self.path)!r})"

    def _read(self) -> dict[str, dict[str, dict[str, list[str]]]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            ok = isinstance(data, dict) and data.get("format") == self.FORMAT and isinstance(data.get("replies"), dict)
            replies = data["replies"] if ok else None
            ok = ok and all(
                isinstance(models, dict) and all(
                    isinstance(prompts, dict) and all(
                        isinstance(v, list) and all(isinstance(r, str) for r in v) for v in prompts.values()
                    ) for prompts in models.values()
                ) for models in replies.values()
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CacheCorruptError(f"cannot read the reply cache {self.path} ({e}); it was left untouched — "
                                    f"move it away or fix it") from e
        if not ok:
            raise CacheCorruptError(f"{self.path} is not a reply cache of format {self.FORMAT!r}; "
                                    f"it was left untouched — move it away or choose another cache path")
        return replies

    def get(self, version: str, model: str, key: str) -> list[str]:
        """The stored replies for a key (a copy; empty if none)."""
        return list(self._data.get(version, {}).get(model, {}).get(key, []))

    def append(self, version: str, model: str, key: str, reply: str) -> None:
        """Store one more reply for a key and write the file atomically."""
        self._data = self._read() or self._data  # merge with what another run may have written meanwhile
        self._data.setdefault(version, {}).setdefault(model, {}).setdefault(key, []).append(reply)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"format": self.FORMAT, "replies": self._data}, indent=1, ensure_ascii=False)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def default_cache_path() -> Path:
    """``$LMD_LLM_CACHE``, else ``~/.cache/lmd_utils/llm_replies.json``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "lmd_utils" / "llm_replies.json"


# =============================================================================================================
# LLM client
# =============================================================================================================
class LLMNotConfigured(RuntimeError):
    """No LLM is configured (model name and an endpoint or key are needed)."""


class LLMRequestError(RuntimeError):
    """The LLM endpoint could not be reached or answered with an error (after the client's retries)."""


def redact_url(url: str | None) -> str | None:
    """``url`` without a ``user:password@`` part, safe to show and store."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask an LLM.  The key is excluded from ``repr`` and never serialised."""

    model: str
    base_url: str | None = None
    api_key: str = field(default=LOCAL_SERVER_KEY, repr=False)
    temperature: float = DEFAULT_TEMPERATURE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    parse_attempts: int = DEFAULT_PARSE_ATTEMPTS

    def __post_init__(self) -> None:
        if self.parse_attempts < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("need parse_attempts >= 1, max_retries >= 0 and timeout_s > 0")

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
            missing.append(f"a model name ({ENV_MODEL} or --model)")
        if not (api_key or base_url):
            missing.append(f"an endpoint ({ENV_BASE_URL}) or a key ({ENV_API_KEY})")
        if missing:
            raise LLMNotConfigured("no LLM configured: set " + " and ".join(missing))
        return cls(model=model, base_url=base_url, api_key=api_key or LOCAL_SERVER_KEY, **options)


def llm_configured() -> bool:
    """Whether the environment configures an LLM (see :meth:`LLMConfig.from_env`)."""
    try:
        LLMConfig.from_env()
    except LLMNotConfigured:
        return False
    return True

class LLMLayoutSource:
    """Layouts from an OpenAI-compatible chat-completions endpoint (paper §3.1), with a reply cache.

    ``get_layout(prompt, sample=k)`` returns the k-th cached reply for (template version, model, prompt) and
    asks the LLM only for samples not cached yet.  A reply that does not parse is answered with a reprompt that
    quotes the problem, up to ``config.parse_attempts`` replies in all; then :class:`LayoutParseError`.
    Network errors and timeouts are retried by the ``openai`` client (``max_retries``), then raise
    :class:`LLMRequestError`.
    """

    def __init__(
        self,
        config: LLMConfig | None = None,
        cache: ReplyCache | str | Path | None = None,
        template: LayoutTemplate | None = None,
    ) -> None:
        self.config = config or LLMConfig.from_env()
        self.cache = ReplyCache(cache) if isinstance(cache, (str, Path)) else cache
        self.template = template or load_template()
        self.name = f"llm {self.config.model}"
        self._client = openai.OpenAI(
            api_key=self.config.api_key,
            base_url=self.config.base_url,
            timeout=self.config.timeout_s,
            max_retries=self.config.max_retries,
        )
        self._counter = SampleCounter()

    def __repr__(self) -> str:
        return f"LLMLayoutSource({self.config!r}, cache={self.cache!r}, template={self.template.version!r})"

    # -- public ---------------------------------------------------------------------------------------------
    def get_layout(self, prompt: str, sample: int | None = None) -> Layout:
        """The layout for ``prompt`` (one user turn after the template)."""
        return self.continue_dialog([caption_turn(prompt)], sample=sample, prompt=prompt)

    def continue_dialog(
        self, history: Sequence[dict[str, str]], sample: int | None = None, prompt: str = ""
    ) -> Layout:
        """The layout the LLM answers to a dialog ``history`` (user/assistant turns, ending with a user turn)."""
        if not history or history[-1].get("role") != "user":
            raise ValueError("a dialog history must end with a user turn")
        key = self._cache_key(history)
        k = self._counter.next(key, sample)
        cached = self.cache.get(self.template.version, self.config.model, key) if self.cache is not None else []
        meta: dict[str, Any] = {"cached": k < len(cached)}
        while len(cached) <= k:  # ask for the samples we do not have yet
            reply, meta = self._fresh_reply(history)
            cached.append(reply)
            if self.cache is not None:
                self.cache.append(self.template.version, self.config.model, key, reply)
        meta.update(source=self.name, model=self.config.model, base_url=redact_url(self.config.base_url),
                    template_version=self.template.version, sample=k)
        return reply_to_layout(cached[k], prompt=prompt or first_caption(history), meta=meta)

    # -- internals ------------------------------------------------------------------------------------------
    @staticmethod
    def _cache_key(history: Sequence[dict[str, str]]) -> str:
        """The prompt itself for a one-turn request; the JSON list of user turns for a dialog."""
        users = [m["content"] for m in history if m.get("role") == "user"]
        if len(users) == 1 and users[0].startswith(CAPTION_PREFIX):
            return users[0][len(CAPTION_PREFIX):]
        return json.dumps(users, ensure_ascii=False)

    def _fresh_reply(self, history: Sequence[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        """Ask until a reply parses (bounded); returns it with request facts (attempts, token usage)."""
        messages = self.template.messages(history=history)
        problem = ""
        for attempt in range(1, self.config.parse_attempts + 1):
            text, usage = self._chat(messages)
            try:
                parse_layout_reply(text)
            except LayoutParseError as e:
                problem = str(e)
                messages = messages + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": REPROMPT.format(error=problem[:200])},
                ]
                continue
            return text, {"cached": False, "attempts": attempt, "usage": usage}
        raise LayoutParseError(
            f"{self.name}: none of {self.config.parse_attempts} replies could be parsed; last problem: {problem}"
        )

    def _chat(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        try:
            response = self._client.chat.completions.create(
                model=self.config.model, messages=messages, temperature=self.config.temperature
            )
        except openai.APIError as e:
            raise LLMRequestError(
                f"{self.name} at {redact_url(self.config.base_url) or 'api.openai.com'}: {type(e).__name__}: {e}"
            ) from e
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise LLMRequestError(f"{self.name}: the response has no choices")
        usage = response.usage.model_dump() if getattr(response, "usage", None) is not None else {}
        return choices[0].message.content or "", usage


# =============================================================================================================
# Choosing a source
# =============================================================================================================
def resolve_source(
    source: "LayoutSource | str | Path | None" = None,
    model: str | None = None,
    base_url: str | None = None,
    cache: ReplyCache | str | Path | bool | None = None,
) -> tuple[LayoutSource, str]:
    """A layout source from a name and a sentence saying which one and why (for the CLI's stderr).

    ``"planner"``: the offline planner; ``"llm"``: the configured LLM (raises :class:`LLMNotConfigured`);
    a path: a reply file; ``None``: the LLM if configured, else the planner.  ``cache`` (LLM sources only):
    ``None`` → :func:`default_cache_path`, ``False`` → no cache, else a path or a :class:`ReplyCache`.
    """
    if cache is None or cache is True:
        cache = default_cache_path()
    elif cache is False:
        cache = None
    if source is not None and not isinstance(source, (str, Path)):
        return source, f"layout source: {source.name}"
    if source is None:
        try:
            config = LLMConfig.from_env(model=model, base_url=base_url)
        except LLMNotConfigured as e:
            return OfflinePlanner(), f"layout source: offline planner ({e})"
        llm = LLMLayoutSource(config, cache=cache)
        return llm, f"layout source: {llm.name} (configured from the environment)"
    if str(source) == "planner":
        return OfflinePlanner(), "layout source: offline planner"
    if str(source) == "llm":
        config = LLMConfig.from_env(model=model, base_url=base_url)
        llm = LLMLayoutSource(config, cache=cache)
        return llm, f"layout source: {llm.name}"
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"layout source {str(source)!r} is neither 'planner', 'llm' nor a reply file")
    replies = ReplyFileSource(path)
    return replies, f"layout source: {replies.name}"


__all__ = [
    "DEFAULT_TEMPERATURE", "DEFAULT_TIMEOUT_S", "DEFAULT_MAX_RETRIES", "DEFAULT_PARSE_ATTEMPTS", "ENV_API_KEY",
    "ENV_BASE_URL", "ENV_MODEL", "ENV_CACHE", "CacheCorruptError", "ReplyCache", "default_cache_path",
    "LLMNotConfigured", "LLMRequestError", "redact_url", "LLMConfig", "llm_configured", "LLMLayoutSource",
    "resolve_source",
]
