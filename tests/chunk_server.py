"""A loopback HTTP server in front of precomputed volumes on disk, with injected storage faults.

cloud-volume reads ``http://127.0.0.1:PORT/<dir>`` from it like any web-hosted precomputed
volume. Chunks written gzip-compressed (``name.gz`` on disk) are served as ``name`` with
``Content-Encoding: gzip``, as a bucket serves them. Faults are keyed by the request path's tail:
``transient[name] = [503, 429]`` answers those statuses to the first requests of ``name`` (then
serves it); ``missing`` names answer 404 forever. ``served`` counts answers per (name, status).
``rendezvous``, a ``threading.Barrier``, holds every request until that many are waiting (a
broken barrier, after its timeout, lets them through: check ``rendezvous.broken``).
``latency_s`` delays every answer, like a bucket's round trip. ``head_faults[name] = status``
answers HEAD requests (a reader's "is it stored?") of ``name`` with that status, GETs as usual.
A request for a single byte range (``Range: bytes=a-b``, ``a-`` or ``-n``) gets those bytes
(206), as from a bucket: readers of sharded volumes fetch shard indices and chunks that way.
"""
from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple


class _Server(ThreadingHTTPServer):
    """Room for a reader's parallel connections: socketserver's default backlog of 5 drops
    connection attempts beyond it, which then wait a second for a retry."""

    request_queue_size = 128


class ChunkServer:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.transient: Dict[str, List[int]] = {}
        self.missing: Set[str] = set()
        self.served = collections.Counter()
        self.rendezvous: Optional[threading.Barrier] = None
        self.latency_s = 0.0
        self.head_faults: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, relative: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{relative}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, path: str, head: bool, byte_range: Optional[str] = None):
        """(status, body, headers) for a request path and its Range header, if any."""
        name = path.rsplit("/", 1)[-1]
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.rendezvous is not None:
            try:
                self.rendezvous.wait()
            except threading.BrokenBarrierError:
                pass
        with self._lock:
            pending = self.transient.get(name)
            if head and name in self.head_faults:
                status = self.head_faults[name]
            elif pending:
                status = pending.pop(0)
            elif name in self.missing:
                status = 404
            else:
                status = 200
            self.served[(name, status)] += 1
        if status != 200:
            return status, b"injected fault", {}
        local = (self.root / path.lstrip("/")).resolve()
        if self.root not in local.parents:
            return 403, b"", {}
        headers = {}
        if not local.is_file() and local.with_name(local.name + ".gz").is_file():
            local = local.with_name(local.name + ".gz")
            headers["Content-Encoding"] = "gzip"
        if not local.is_file():
            return 404, b"", {}
        body = local.read_bytes()
        if byte_range:
            size = len(body)
            span = _span(byte_range, size)
            if span is None:
                return 416, b"", {"Content-Range": f"bytes */{size}"}
            headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{size}"
            return 206, b"" if head else body[span[0]:span[1]], headers
        return 200, b"" if head else body, headers

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, head: bool):
                status, body, headers = server._answer(self.path.split("?", 1)[0], head,
                                                       self.headers.get("Range"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self):
                self._reply(head=False)

            def do_HEAD(self):
                self._reply(head=True)

            def log_message(self, *args):
                pass

        return Handler


def _span(byte_range: str, size: int) -> Optional[Tuple[int, int]]:
    """[start, stop) of a single ``bytes=`` range in a body of ``size`` bytes; None when it
    cannot be satisfied (or is not a single byte range)."""
    unit, _, spec = byte_range.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec:
        return None
    try:
        if not first:                                    # "-n": the last n bytes
            start, stop = max(0, size - int(last)), size
        else:
            start = int(first)
            stop = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    return (start, stop) if start < stop else None
