"""A real HTTP server on 127.0.0.1 that speaks OpenAI's chat-completions protocol, for tests.

``POST /v1/chat/completions`` answers with ``{"choices": [{"message": {"content": ...}}], "usage": ...}``.
What it answers is scripted: queue :class:`Reply` (optionally after a delay, to provoke client timeouts),
:class:`HTTPError`, and for fault tests :class:`Raw` (any status and body bytes, even cut short) and
:class:`Dribble` (a completion sent one byte at a time) actions; when the queue is empty it replays recorded
replies per caption (the k-th request for a caption gets the k-th recorded reply), else answers HTTP 500.
Every request body and its ``Authorization`` header are recorded in :attr:`FakeOpenAIServer.requests`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union


@dataclass
class Reply:
    """Answer with this message content, after ``delay_s`` seconds."""

    content: str
    delay_s: float = 0.0


@dataclass
class HTTPError:
    """Answer with an HTTP error status (500 by default); ``retry_after_ms`` keeps client back-off short."""

    status: int = 500
    message: str = "internal error (scripted)"
    retry_after_ms: int | None = 10


@dataclass
class Raw:
    """Answer with exactly these body bytes (need not be JSON, nor UTF-8); ``cut_after`` bytes, then hang up."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    cut_after: int | None = None


@dataclass
class Dribble:
    """Answer a completion with ``content``, one byte every ``interval_s`` seconds: each read of the client
    returns quickly, so only a deadline on the whole request stops it.  ``headers_too``: the status line and
    headers dribble as well (else they are sent at once)."""

    content: str
    interval_s: float = 0.3
    headers_too: bool = False


Action = Union[Reply, HTTPError, Raw, Dribble]


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    authorization: str | None

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.body.get("messages", [])


class FakeOpenAIServer:
    """Start with :meth:`start` (random port); ``base_url`` is ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, recorded: dict[str, list[str]] | None = None, caption_prefix: str = "Caption: ") -> None:
        self.script: deque[Action] = deque()
        self.recorded = recorded or {}
        self.caption_prefix = caption_prefix
        self.requests: list[RecordedRequest] = []
        self._replayed: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- control --------------------------------------------------------------------------------------------
    def queue(self, *actions: Action) -> None:
        self.script.extend(actions)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                action = server._next_action(self.path, body, self.headers.get("Authorization"))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    action = HTTPError(404, f"no route {self.path}", None)
                try:
                    if isinstance(action, HTTPError):
                        self._send(action.status, {"error": {"message": action.message, "type": "server_error"}},
                                   {"retry-after-ms": str(action.retry_after_ms)} if action.retry_after_ms else {})
                        return
                    if isinstance(action, Raw):
                        self._send_raw(action)
                    elif isinstance(action, Dribble):
                        self._dribble(action, json.dumps(server._completion(body, action.content)).encode())
                    else:
                        time.sleep(action.delay_s)
                        self._send(200, server._completion(body, action.content))
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    pass

            def _send_raw(self, action: Raw) -> None:
                self.send_response(action.status)
                self.send_header("Content-Type", action.content_type)
                self.send_header("Content-Length", str(len(action.body)))
                self.end_headers()
                self.wfile.write(action.body[:action.cut_after])
                if action.cut_after is not None:
                    self.close_connection = True

            def _dribble(self, action: Dribble, data: bytes) -> None:
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
                        f"\r\n\r\n").encode()
                if not action.headers_too:
                    self.wfile.write(head)
                    head = b""
                for byte in head + data:
                    if server._stopped.wait(action.interval_s):  # the test is over
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                self.close_connection = True

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- behaviour ------------------------------------------------------------------------------------------
    def _next_action(self, path: str, body: dict[str, Any], authorization: str | None) -> Action:
        with self._lock:
            self.requests.append(RecordedRequest(path, body, authorization))
            if self.script:
                return self.script.popleft()
            users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
            caption = users[-1][len(self.caption_prefix):] if users and users[-1].startswith(self.caption_prefix) else None
            replies = self.recorded.get(caption or "", [])
            k = self._replayed[caption or ""]
            if k < len(replies):
                self._replayed[caption or ""] += 1
                return Reply(replies[k])
            return HTTPError(500, f"nothing scripted or recorded for {caption!r}", 10)

    @staticmethod
    def _completion(body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = sum(len(m.get("content", "").split()) for m in body.get("messages", []))
        completion_tokens = len(content.split())
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "unknown"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
