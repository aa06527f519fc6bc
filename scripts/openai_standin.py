"""An OpenAI-compatible streaming chat server that replays a script: a stand-in for vLLM/Ollama.

`POST /v1/chat/completions` with `"stream": true` answers every prompt with the same text, as
`chat.completion.chunk` SSE events ending in `data: [DONE]`, on the script's own timeline (the
first delta `delay_ms` of item 0 after the request has been read, each next one `delay_ms` after
the previous one's scheduled time, as the scripted LLM does: sleeps never drift). Without
`"stream": true` it answers one `chat.completion`. `GET /v1/models` lists the model.

A hand-written HTTP/1.1 server on asyncio streams (the standard library only): keep-alive by
default (`Connection: close` honoured), SSE bodies sent chunked, request bodies by Content-Length
or chunked, hundreds of concurrent streams in one event loop. A client that goes away mid-stream
ends only its own stream.

    python scripts/openai_standin.py --script answer.json          # the scripted LLM's format
    python scripts/openai_standin.py --first-token-ms 200 --tokens-per-s 30 [--sentences 3]
    [--port 0] [--host 127.0.0.1]

It prints `listening http://HOST:PORT/v1` on stdout once it accepts connections (`--port 0`, the
default, picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

IDLE_TIMEOUT_S = 75.0  # a kept-alive connection with no request this long is closed
MAX_HEADER_BYTES = 65536
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class BadRequest(Exception):
    pass


def load_items(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The answer as [{text, delay_ms}], from --script or built like bench_latency's script."""
    if args.script:
        raw = json.loads(Path(args.script).read_text(encoding="utf-8"))
        return [{"text": item, "delay_ms": 0.0} if isinstance(item, str) else item for item in raw]
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_latency import make_script  # scripts/bench_latency.py

    script = make_script(args.first_token_ms, args.tokens_per_s)
    ends = [i for i, item in enumerate(script) if item["text"].endswith(".")]
    return script[: ends[min(args.sentences, len(ends)) - 1] + 1]


# --- HTTP/1.1 -------------------------------------------------------------------------------


class Request:
    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.version, self.headers = method, path, version, headers
        self.body = b""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the client closed it between requests."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT_S)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, path, version = lines[0].split(" ", 2)
    except ValueError:
        raise BadRequest("bad request line") from None
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    request = Request(method, path, version, headers)
    request.body = await read_body(reader, headers)
    return request


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(headers.get("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def head_bytes(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_json(
    writer: asyncio.StreamWriter, status: int, payload: Any, keep_alive: bool
) -> None:
    body = json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "keep-alive" if keep_alive else "close",
    }
    writer.write(head_bytes(status, headers) + body)
    await writer.drain()


def chunk(data: bytes) -> bytes:
    """One HTTP chunk of a chunked body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# --- OpenAI chat completions ----------------------------------------------------------------


class StandIn:
    """The routes; one instance serves every connection."""

    def __init__(self, items: list[dict[str, Any]], model: str) -> None:
        self.items = items
        self.model = model
        self.text = "".join(item.get("text", "") for item in items)
        self.completions = 0
        self.streams_open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await read_request(reader)
                except (BadRequest, ValueError, asyncio.IncompleteReadError) as exc:
                    await send_json(writer, 400, error_body(str(exc)), keep_alive=False)
                    return
                if request is None:
                    return
                await self.route(request, writer)
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the client went away: only this connection ends
        finally:
            writer.close()

    async def route(self, request: Request, writer: asyncio.StreamWriter) -> None:
        path = request.path.split("?", 1)[0].rstrip("/")
        keep = request.keep_alive
        if path.endswith("/models") and request.method == "GET":
            models = {"object": "list", "data": [model_entry(self.model)]}
            return await send_json(writer, 200, models, keep)
        if not path.endswith("/chat/completions"):
            return await send_json(writer, 404, error_body(f"no route {path}"), keep)
        if request.method != "POST":
            return await send_json(writer, 405, error_body("use POST"), keep)
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return await send_json(writer, 400, error_body("body is not JSON"), keep)
        model = body.get("model") or self.model
        self.completions += 1
        if not body.get("stream"):
            await asyncio.sleep(sum(item.get("delay_ms", 0.0) for item in self.items) / 1000)
            return await send_json(writer, 200, completion(model, self.text), keep)
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        await self.stream(writer, model, usage, keep)

    async def stream(
        self, writer: asyncio.StreamWriter, model: str, usage: bool, keep_alive: bool
    ) -> None:
        """The SSE body, chunked, each delta at its scheduled time."""
        self.streams_open += 1
        try:
            writer.write(
                head_bytes(
                    200,
                    {
                        "content-type": "text/event-stream; charset=utf-8",
                        "cache-control": "no-cache",
                        "transfer-encoding": "chunked",
                        "connection": "keep-alive" if keep_alive else "close",
                    },
                )
            )
            ident = f"chatcmpl-standin-{self.completions}"
            loop = asyncio.get_running_loop()
            due = loop.time()
            first = True
            for item in self.items:
                due += item.get("delay_ms", 0.0) / 1000
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not item.get("text"):
                    continue
                delta = {"content": item["text"]}
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                writer.write(chunk(sse(chunk_event(ident, model, delta, None))))
                await writer.drain()
            tail = sse(chunk_event(ident, model, {}, "stop"))
            if usage:
                tail += sse(usage_event(ident, model, len(self.items)))
            writer.write(chunk(tail + b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.streams_open -= 1


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def chunk_event(
    ident: str, model: str, delta: dict[str, Any], finish: str | None
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_event(ident: str, model: str, tokens: int) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
    }


def completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "standin"}


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


# --- main -------------------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    standin = StandIn(load_items(args), args.model)
    server = await asyncio.start_server(
        standin.handle, args.host, args.port, backlog=4096, limit=MAX_HEADER_BYTES
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening http://{args.host}:{port}/v1", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="standin")
    parser.add_argument("--script", help="a scripted-LLM JSON script: [{text, delay_ms}, ...]")
    parser.add_argument("--first-token-ms", type=float, default=200.0)
    parser.add_argument("--tokens-per-s", type=float, default=30.0)
    parser.add_argument("--sentences", type=int, default=3)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
