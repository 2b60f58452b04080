"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions with scripted answers.

Used by the tests and by bench/llm_client.py. It counts requests and can inject latency, 429 with
Retry-After, 5xx, hangs (for timeouts), malformed JSON, truncated (`length`) and empty answers. Structured
outputs: a server made with `structured_outputs=False` answers a request that carries `response_format` with
HTTP 400 naming the parameter, as servers without json_schema support do; otherwise the request reaches the
script, which sees the schema in `call.response_schema` (and may answer with `Reply.json(...)`), and
`reasoning` in a Reply is sent the way vLLM's reasoning parser sends it (`message.reasoning_content`).

    with LoopbackOpenAI(latency_s=0.05) as server:
        llm = OpenAICompatibleLLM(base_url=server.url, model="scripted")
        server.script = lambda call: Reply.error(429, retry_after=0.2) if call.number == 1 else None
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Call:
    number: int  # 1-based, over the server's life
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def last_user(self) -> str:
        users = [m["content"] for m in self.body.get("messages", []) if m.get("role") == "user"]
        return users[-1] if users else ""

    @property
    def response_schema(self) -> dict[str, Any] | None:
        """The JSON schema of a structured-output request, None for free text."""
        fmt = self.body.get("response_format") or {}
        return (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None


@dataclass
class Reply:
    status: int = 200
    contents: list[str] | None = None  # one per choice; None = the default echo answer
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: bytes | None = None  # sent as is (malformed JSON)
    delay_s: float = 0.0
    reasoning: str | None = None  # sent as message.reasoning_content (a server-side reasoning parser)

    @staticmethod
    def json(value: dict[str, Any], reasoning: str | None = None) -> "Reply":
        return Reply(contents=[json.dumps(value)], reasoning=reasoning)

    @staticmethod
    def error(status: int, retry_after: float | None = None) -> "Reply":
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return Reply(status=status, headers=headers,
                     raw_body=json.dumps({"error": {"message": f"scripted {status}", "type": "scripted"}}).encode())

    @staticmethod
    def malformed() -> "Reply":
        return Reply(raw_body=b'{"id": "x", "choices": [ {"index": 0, "message": ')

    @staticmethod
    def hang(seconds: float) -> "Reply":
        return Reply(delay_s=seconds)


def default_answer(call: Call, i: int) -> str:
    return f"echo {i}: {call.last_user[:80]}"


class LoopbackOpenAI:
    """Start with `with LoopbackOpenAI() as s:`; `s.url` is the base URL including /v1."""

    def __init__(self, latency_s: float = 0.0, supports_n: bool = True,
                 script: Callable[[Call], Reply | None] | None = None, structured_outputs: bool = True):
        self.latency_s = latency_s
        self.supports_n = supports_n
        self.structured_outputs = structured_outputs
        self.script = script
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered_samples = 0  # choices actually returned with 200
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> int:
        return len(self.calls)

    def __enter__(self) -> "LoopbackOpenAI":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with outer._lock:
                    call = Call(len(outer.calls) + 1, body, dict(self.headers.items()))
                    outer.calls.append(call)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    if "response_format" in call.body and not outer.structured_outputs:
                        reply = Reply(status=400, raw_body=json.dumps({"error": {
                            "message": "response_format of type json_schema is not supported by this server",
                            "type": "invalid_request_error", "param": "response_format"}}).encode())
                    else:
                        reply = (outer.script(call) if outer.script else None) or Reply()
                    time.sleep(outer.latency_s + reply.delay_s)
                    self._send(call, reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer._lock:
                        outer.in_flight -= 1

            def _send(self, call: Call, reply: Reply) -> None:
                if reply.raw_body is not None:
                    payload = reply.raw_body
                else:
                    n = int(call.body.get("n", 1)) if outer.supports_n else 1
                    contents = reply.contents or [default_answer(call, i) for i in range(n)]
                    payload = json.dumps({
                        "id": f"cmpl-{call.number}", "object": "chat.completion", "created": int(time.time()),
                        "model": call.body.get("model", "scripted"),
                        "choices": [{"index": i, "message": {"role": "assistant", "content": c,
                                                             **({"reasoning_content": reply.reasoning}
                                                                if reply.reasoning else {})},
                                     "finish_reason": reply.finish_reason} for i, c in enumerate(contents)],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 5 * len(contents),
                                  "total_tokens": 10 + 5 * len(contents)},
                    }).encode()
                    if reply.status == 200:
                        with outer._lock:
                            outer.answered_samples += len(contents)
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # the default backlog of 5 drops bursts of new connections (1 s SYN retry)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    """Serve in its own process (benchmarks: keeps the server off the client's GIL)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--no-n", action="store_true", help="ignore n (answer one choice), like llama.cpp's server")
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long (bounded by design)")
    args = ap.parse_args()
    with LoopbackOpenAI(latency_s=args.latency, supports_n=not args.no_n) as server:
        print(server.url, flush=True)
        deadline = time.time() + args.seconds
        try:
            while time.time() < deadline:
                line = sys.stdin.readline()
                if not line or line.strip() == "quit":
                    break
                if line.strip() == "count":
                    print(server.requests, server.max_in_flight, flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
