"""The LLM reply cache: replies on disk, keyed by (template version, model, prompt), safe for concurrent runs.

As in the authors' code, the k-th request for a prompt gets the k-th stored reply, so reruns are free and
reproducible.  :class:`~lmd_utils.llm_client.LLMLayoutSource` stores a reply only once it parsed and passed its
``validate`` check, and removes a stored reply that later fails it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import filelock

from .layout import single_line

ENV_CACHE = "LMD_LLM_CACHE"
#: How long a cache write waits for another process's write (which takes milliseconds) before giving up.
CACHE_LOCK_TIMEOUT_S = 60.0
#: Error messages are cut to this many characters (a proxy's error page can be megabytes).
MAX_MESSAGE_CHARS = 300


def _cut(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters (an error message must stay readable)."""
    return single_line(text, limit)


class CacheCorruptError(RuntimeError):
    """The reply cache cannot be read or written (corrupt, unwritable, or locked too long); the file is left
    untouched."""


class ReplyCache:
    """Parsed LLM replies on disk, keyed by (template version, model, prompt), a list of replies per key.

    The file is ``{"format": ..., "replies": {version: {model: {prompt: [reply, ...]}}}}``.  Only replies that
    parsed (and passed the source's ``validate``) are stored.  A write holds a lock (the file ``<cache>.lock``
    beside it) while it reads the file, merges its change and replaces the file atomically (``os.replace``), so
    an interrupted or concurrent run loses nothing: without the lock, two runs that read the same file would
    each write back their own reply and one would be lost.  Reads need no lock (the file is always whole).  A
    corrupt file raises :class:`CacheCorruptError` and is never overwritten.
    """

    FORMAT = "lmd_utils reply cache 1"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path) + ".lock", timeout=CACHE_LOCK_TIMEOUT_S)
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
            raise CacheCorruptError(f"cannot read the reply cache {self.path} ({_cut(e, 120)}); it was left "
                                    f"untouched — move it away or fix it") from e
        if not ok:
            raise CacheCorruptError(f"{self.path} is not a reply cache of format {self.FORMAT!r}; "
                                    f"it was left untouched — move it away or choose another cache path")
        return replies

    def get(self, version: str, model: str, key: str) -> list[str]:
        """The stored replies for a key (a copy; empty if none)."""
        return list(self._data.get(version, {}).get(model, {}).get(key, []))

    def append(self, version: str, model: str, key: str, reply: str) -> None:
        """Store one more reply for a key: read, merge and write the file under the lock."""
        with self._locked():
            data = self._read()  # what other runs wrote meanwhile is kept
            data.setdefault(version, {}).setdefault(model, {}).setdefault(key, []).append(reply)
            self._write(data)

    def remove(self, version: str, model: str, key: str, reply: str) -> int:
        """Delete every copy of ``reply`` stored for a key (a reply that turned out unusable); returns how many.

        Like :meth:`append`, under the lock and atomic; keys left empty are dropped.
        """
        with self._locked():
            data = self._read()
            models = data.get(version, {})
            replies = models.get(model, {}).get(key, [])
            kept = [r for r in replies if r != reply]
            removed = len(replies) - len(kept)
            if removed:
                if kept:
                    models[model][key] = kept
                else:  # prune empty levels, so the file holds no dangling keys
                    del models[model][key]
                    if not models[model]:
                        del models[model]
                    if not models:
                        del data[version]
                self._write(data)
            else:
                self._data = data
            return removed

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the cache's lock (``<cache>.lock``); waits for another run's write, at most the lock's timeout."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except filelock.Timeout as e:  # (a TimeoutError, so before OSError)
            raise CacheCorruptError(f"the reply cache {self.path} stayed locked by another process for "
                                    f"{self._lock.timeout:g} s ({self._lock.lock_file}); nothing was written") from e
        except OSError as e:
            raise CacheCorruptError(f"cannot lock the reply cache {self.path} ({_cut(e, 120)}); choose another "
                                    f"cache path (${ENV_CACHE})") from e
        try:
            yield
        finally:
            self._lock.release()

    def _write(self, data: dict[str, dict[str, dict[str, list[str]]]]) -> None:
        """Replace the file by ``data`` atomically (a temporary file, then ``os.replace``); call under the lock."""
        payload = json.dumps({"format": self.FORMAT, "replies": data}, indent=1, ensure_ascii=False)
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(payload + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:  # a read-only folder, a full disk, ...
            raise CacheCorruptError(f"cannot write the reply cache {self.path} ({_cut(e, 120)}); the file was "
                                    f"left as it was — choose another cache path (${ENV_CACHE})") from e
        self._data = data


def default_cache_path() -> Path:
    """``$LMD_LLM_CACHE``, else ``~/.cache/lmd_utils/llm_replies.json``."""
    env = os.environ.get(ENV_CACHE)
    return Path(env) if env else Path.home() / ".cache" / "lmd_utils" / "llm_replies.json"
