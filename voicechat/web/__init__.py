"""The browser client: static files shipped in the package and served by `voicechat serve`.

The page (HTML, ES modules, the AudioWorklet processor, CSS) needs no build step and fetches
nothing from elsewhere. The server reads the folder once at start-up into a table keyed by URL
path; a request is answered from that table or gets 404, so no request path ever reaches the
file system (`..`, `%2e%2e`, `//` and the like have nothing to resolve against).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str  # a strong validator: the browser revalidates (no-cache) and gets 304 if unchanged


def load_static_files(folder: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """URL path -> file, for every file of a known type in `folder` (not its subfolders).

    `/` is index.html. Files of other types are not served at all.
    """
    files: dict[str, StaticFile] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        files["/" + path.name] = StaticFile(body, content_type, etag)
    if "/index.html" in files:
        files["/"] = files["/index.html"]
    return files


ENTITY_TAG = re.compile(r'\*|(?:W/)?"[^"]*"')


def etag_matches(if_none_match: list[str], etag: str) -> bool:
    """Does a request's `If-None-Match` (every such header: it is a list, and RFC 9110 lets a
    client or proxy split a list over several header lines) name `etag`? Weak comparison, as
    RFC 9110 13.1.2 asks: `W/"x"` matches `"x"`; `*` matches any."""
    for tag in ENTITY_TAG.findall(",".join(if_none_match)):
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def security_headers(host: str | None) -> dict[str, str]:
    """Headers for every page response: a strict Content-Security-Policy and friends.

    Scripts, styles and the worklet come from this origin only; the page may open a WebSocket
    to the host it was loaded from (`connect-src` names it: `'self'` does not cover ws: in
    every browser) and nothing else.
    """
    connect = "'self'"
    if host and all(ch.isalnum() or ch in ".-:[]" for ch in host):
        connect += f" ws://{host} wss://{host}"
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
