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

Usage: `prompt_tokens` per response is 10 unless `count_prompt_tokens(messages)` is given (a real tokenizer, for
the spend benchmarks), and `completion_tokens_per_choice` (default 5) per choice.

The Batch API (`/v1/files`, `/v1/batches`; see `LoopbackBatches`): uploaded JSONL request files are checked
against the API's limits (requests per file, bytes per file), each line answered by the same `script` as the
chat endpoint (a scripted error status becomes an error-file line: a partial failure), a batch moves
validating -> in_progress -> completed over `batches.polls_to_complete` retrieves, and `batches.expire_after`
makes a batch expire with only that many requests answered (the rest are `batch_expired` lines in its error
file, as the API does).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# The OpenAI Batch API's limits on one input file (platform docs, batches create: "up to 50,000 requests, and can
# be up to 200 MB in size"); completion_window accepts only "24h".
BATCH_MAX_REQUESTS = 50_000
BATCH_MAX_BYTES = 200 * 1024 * 1024


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


@dataclass
class BatchState:
    id: str
    input_file_id: str
    lines: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, Any]
    status: str = "validating"
    polls: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0


@dataclass
class LoopbackBatches:
    """The files + batches endpoints' state and knobs (a test sets them between calls)."""

    polls_to_complete: int = 2            # retrieves before a batch completes (1st: in_progress)
    expire_after: int | None = None       # expire every new batch after answering this many of its requests
    max_requests: int = BATCH_MAX_REQUESTS
    max_bytes: int = BATCH_MAX_BYTES
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    batches: dict[str, BatchState] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)   # batch ids in creation order
    lines_answered: int = 0                              # request lines that got a 200 body
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    def requests_of(self, batch_id: str) -> list[str]:
        return [line["custom_id"] for line in self.batches[batch_id].lines]


class LoopbackOpenAI:
    """Start with `with LoopbackOpenAI() as s:`; `s.url` is the base URL including /v1."""

    def __init__(self, latency_s: float = 0.0, supports_n: bool = True,
                 script: Callable[[Call], Reply | None] | None = None, structured_outputs: bool = True,
                 count_prompt_tokens: Callable[[list[dict[str, str]]], int] | None = None,
                 completion_tokens_per_choice: int = 5):
        self.latency_s = latency_s
        self.supports_n = supports_n
        self.structured_outputs = structured_outputs
        self.script = script
        self.count_prompt_tokens = count_prompt_tokens
        self.completion_tokens_per_choice = completion_tokens_per_choice
        self.batches = LoopbackBatches()
        self.prompt_tokens_counted = 0      # usage reported with 200 answers (chat and batch lines)
        self.completion_tokens_counted = 0
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.answered_samples = 0  # choices actually returned with 200
        self._lock = threading.RLock()  # batch processing answers lines under it
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

    def reply_for(self, call: Call) -> Reply:
        """What the server answers to one chat request (the chat endpoint and each batch line)."""
        if "response_format" in call.body and not self.structured_outputs:
            return Reply(status=400, raw_body=json.dumps({"error": {
                "message": "response_format of type json_schema is not supported by this server",
                "type": "invalid_request_error", "param": "response_format"}}).encode())
        return (self.script(call) if self.script else None) or Reply()

    def completion_body(self, call: Call, reply: Reply) -> dict[str, Any]:
        """The chat.completion JSON for a 200 reply, usage counted."""
        n = int(call.body.get("n", 1)) if self.supports_n else 1
        contents = reply.contents or [default_answer(call, i) for i in range(n)]
        prompt = self.count_prompt_tokens(call.body.get("messages", [])) if self.count_prompt_tokens else 10
        completion = self.completion_tokens_per_choice * len(contents)
        with self._lock:
            self.answered_samples += len(contents)
            self.prompt_tokens_counted += prompt
            self.completion_tokens_counted += completion
        return {
            "id": f"cmpl-{call.number}", "object": "chat.completion", "created": int(time.time()),
            "model": call.body.get("model", "scripted"),
            "choices": [{"index": i, "message": {"role": "assistant", "content": c,
                                                 **({"reasoning_content": reply.reasoning} if reply.reasoning else {})},
                         "finish_reason": reply.finish_reason} for i, c in enumerate(contents)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    def _next_call(self, body: dict[str, Any], headers: dict[str, str]) -> Call:
        with self._lock:
            call = Call(len(self.calls) + 1, body, headers)
            self.calls.append(call)
        return call

    # ---- the Batch API ------------------------------------------------------------------------------------

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            return 400, {"error": {"message": "expected a file with purpose=batch", "type": "invalid_request_error"}}
        filename, data = fields["file"]
        file_id = self.batches.new_id("file")
        self.batches.files[file_id] = {"bytes": data, "filename": filename, "purpose": "batch"}
        return 200, {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                     "filename": filename, "purpose": "batch", "status": "processed"}

    def _create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        state = self.batches
        file = state.files.get(body.get("input_file_id", ""))
        invalid = None
        if file is None:
            invalid = "no such input file"
        elif body.get("completion_window") != "24h":
            invalid = "completion_window must be 24h"
        elif body.get("endpoint") != "/v1/chat/completions":
            invalid = "only /v1/chat/completions is served here"
        elif len(file["bytes"]) > state.max_bytes:
            invalid = f"input file is {len(file['bytes'])} bytes, over the {state.max_bytes} limit"
        if invalid is None:
            lines = [json.loads(line) for line in file["bytes"].decode("utf-8").splitlines() if line.strip()]
            ids = [line.get("custom_id") for line in lines]
            if len(lines) > state.max_requests:
                invalid = f"{len(lines)} requests, over the {state.max_requests} limit"
            elif len(set(ids)) != len(ids) or None in ids:
                invalid = "custom_id values must be present and unique"
        if invalid is not None:
            return 400, {"error": {"message": invalid, "type": "invalid_request_error"}}
        batch = BatchState(state.new_id("batch"), body["input_file_id"], lines, int(time.time()),
                           body.get("metadata") or {})
        state.batches[batch.id] = batch
        state.created.append(batch.id)
        return 200, self._batch_object(batch)

    def _advance(self, batch: BatchState) -> None:
        """One retrieve: validating -> in_progress -> ... -> completed (or expired)."""
        if batch.status in ("completed", "expired", "failed", "cancelled"):
            return
        batch.polls += 1
        if batch.polls < self.batches.polls_to_complete:
            batch.status = "in_progress"
            batch.completed = len(batch.lines) * batch.polls // max(1, self.batches.polls_to_complete)
            return
        out, errors = [], []
        limit = self.batches.expire_after
        for i, line in enumerate(batch.lines):
            if limit is not None and i >= limit:
                errors.append({"id": f"batch_req_{batch.id}_{i}", "custom_id": line["custom_id"], "response": None,
                               "error": {"code": "batch_expired",
                                         "message": "This request could not be executed before the completion "
                                                    "window expired."}})
                continue
            call = self._next_call(line["body"], {})
            reply = self.reply_for(call)
            if reply.status == 200 and reply.raw_body is None:
                out.append({"id": f"batch_req_{batch.id}_{i}", "custom_id": line["custom_id"],
                            "response": {"status_code": 200, "request_id": f"req_{i}",
                                         "body": self.completion_body(call, reply)}, "error": None})
                self.batches.lines_answered += 1
            else:
                body = json.loads(reply.raw_body) if reply.raw_body and reply.raw_body.startswith(b"{\"error") else \
                    {"error": {"message": "malformed", "type": "server_error"}}
                errors.append({"id": f"batch_req_{batch.id}_{i}", "custom_id": line["custom_id"],
                               "response": {"status_code": reply.status if reply.status != 200 else 500,
                                            "request_id": f"req_{i}", "body": body}, "error": None})
        batch.completed, batch.failed = len(out), len(errors)
        if out:
            batch.output_file_id = self._store_file("\n".join(json.dumps(o) for o in out) + "\n")
        if errors:
            batch.error_file_id = self._store_file("\n".join(json.dumps(e) for e in errors) + "\n")
        batch.status = "expired" if limit is not None and limit < len(batch.lines) else "completed"

    def _store_file(self, text: str) -> str:
        file_id = self.batches.new_id("file")
        self.batches.files[file_id] = {"bytes": text.encode(), "filename": f"{file_id}.jsonl",
                                       "purpose": "batch_output"}
        return file_id

    def _batch_object(self, batch: BatchState) -> dict[str, Any]:
        return {"id": batch.id, "object": "batch", "endpoint": "/v1/chat/completions", "errors": None,
                "input_file_id": batch.input_file_id, "completion_window": "24h", "status": batch.status,
                "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
                "created_at": batch.created_at, "expires_at": batch.created_at + 86400, "metadata": batch.metadata,
                "request_counts": {"total": len(batch.lines), "completed": batch.completed, "failed": batch.failed}}

    def __enter__(self) -> "LoopbackOpenAI":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _json(self, status: int, value: dict[str, Any]) -> None:
                payload = json.dumps(value).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0].rstrip("/")
                data: bytes | None = None
                with outer._lock:
                    if path.startswith("/v1/batches/"):
                        batch = outer.batches.batches.get(path.rsplit("/", 1)[1])
                        if batch is None:
                            return self._json(404, {"error": {"message": "no such batch"}})
                        outer._advance(batch)
                        return self._json(200, outer._batch_object(batch))
                    if path.startswith("/v1/files/") and path.endswith("/content"):
                        file = outer.batches.files.get(path.split("/")[3])
                        data = file["bytes"] if file else None
                if data is None:
                    return self._json(404, {"error": {"message": f"nothing at {path}"}})
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/files"):
                    with outer._lock:
                        status, value = outer._upload(self.headers.get("Content-Type", ""), raw)
                    return self._json(status, value)
                if path.endswith("/batches"):
                    with outer._lock:
                        status, value = outer._create_batch(json.loads(raw or b"{}"))
                    return self._json(status, value)
                body = json.loads(raw or b"{}")
                call = outer._next_call(body, dict(self.headers.items()))
                with outer._lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    reply = outer.reply_for(call)
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
                elif reply.status == 200:
                    payload = json.dumps(outer.completion_body(call, reply)).encode()
                else:
                    payload = json.dumps({"error": {"message": f"scripted {reply.status}"}}).encode()
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


# Server behaviours for scripted runs from the command line (bench/reliability.py).
MODES: dict[str, Callable[[Call], Reply | None] | None] = {
    "normal": None,
    "empty": lambda call: Reply(contents=[""] * int(call.body.get("n", 1))),
    "hang": None,  # filled in by main: hangs as long as the server lives
}


def main() -> None:
    """Serve in its own process (benchmarks: keeps the server off the client's GIL)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--no-n", action="store_true", help="ignore n (answer one choice), like llama.cpp's server")
    ap.add_argument("--seconds", type=float, default=600.0, help="stop after this long (bounded by design)")
    ap.add_argument("--mode", choices=tuple(MODES), default="normal",
                    help="how to answer; switch later with 'mode NAME' on stdin (fail-after-N: 503 after request N)")
    args = ap.parse_args()
    modes = {**MODES, "hang": lambda call: Reply.hang(args.seconds)}
    with LoopbackOpenAI(latency_s=args.latency, supports_n=not args.no_n, script=modes[args.mode]) as server:
        print(server.url, flush=True)
        deadline = time.time() + args.seconds
        try:
            while time.time() < deadline:
                line = sys.stdin.readline()
                if not line or line.strip() == "quit":
                    break
                if line.strip() == "count":  # requests received, most in flight at once, samples answered
                    print(server.requests, server.max_in_flight, server.answered_samples, flush=True)
                elif line.startswith("mode "):
                    name = line.split()[1]
                    if name.startswith("fail-after-"):
                        after = server.requests + int(name.rsplit("-", 1)[1])
                        server.script = lambda call, after=after: Reply.error(503) if call.number > after else None
                    else:
                        server.script = modes[name]
                    print("ok", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
