"""Benchmark: naming a run's shards at its end on GCS, one shard after another (as one worker did
before) against spread over workers (FinalizeShards: numbered at once, renamed per shard).

    python benchmarks/finalize_shards.py [--shards N] [--workers W] [--shard-kb KB]
                                         [--latency-ms MS]

Against the GCS emulator the tests use (fake-gcs-server, loopback: a few ms per request, where
GCS takes tens), it uploads N temporary shards and their index lines as the writer leaves them,
then gives them their final names twice on fresh copies: serially in this process, and through
FinalizeShards on the DirectRunner with W worker threads. It prints both times and their ratio,
and checks that both made the same files. On GCS each request waits longer, so spreading gains
more there than here; a run of a million instances at the default shard size has about 2,000
shards.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.flags import non_negative_float, positive_int  # noqa: E402 - needs ROOT


class DelayingProxy:
    """A loopback HTTP proxy in front of the emulator that answers every request ``latency_s``
    late, like a bucket's round trip: STORAGE_EMULATOR_HOST points at it while it runs."""

    def __init__(self, upstream: str, latency_s: float):
        import http.client
        import os
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        host, port = urlsplit(upstream).hostname, urlsplit(upstream).port
        hop = {"connection", "keep-alive", "transfer-encoding", "content-length"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(latency_s)
                upstream_conn = http.client.HTTPConnection(host, port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                answer = upstream_conn.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in hop:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream_conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._upstream = upstream
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{self._server.server_port}"

    def close(self):
        import os

        self._server.shutdown()
        os.environ["STORAGE_EMULATOR_HOST"] = self._upstream


def upload_written(emulator, bucket: str, out: str, shards: int, shard_bytes: int):
    """The writer's leftovers under OUT/_tmp: WrittenShards of ``shards`` groups of split train."""
    import hashlib

    from synanno_datagen.transforms.records import WrittenShard

    client = emulator.client().bucket(bucket)
    prefix = out[len(f"gs://{bucket}/"):]
    written = []
    for group in range(shards):
        data = bytes([group % 256]) * shard_bytes
        name = f"{prefix}/_tmp/train-group{group:06d}"
        client.blob(name + ".tfrecord").upload_from_string(data)
        client.blob(name + ".jsonl").upload_from_string(f'{{"instance_id": {group}}}\n')
        written.append(WrittenShard(group, "train", f"{out}/_tmp/train-group{group:06d}.tfrecord",
                                    1, len(data), hashlib.sha256(data).hexdigest(),
                                    f"{out}/_tmp/train-group{group:06d}.jsonl", {"instances": 1}))
    return written


def serially(out: str, written) -> list:
    from synanno_datagen.transforms.write import FinalizeShardFn, number_shards

    fn = FinalizeShardFn(out, "none")
    fn.start_bundle()
    return [info for numbered in number_shards(written) for info in fn.process(numbered)]


def spread(out: str, written, workers: int) -> None:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from synanno_datagen.transforms.write import FinalizeShards

    options = PipelineOptions(flags=[], direct_num_workers=workers,
                              direct_running_mode="multi_threading")
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Create(written) | FinalizeShards(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=positive_int, default=400)
    parser.add_argument("--workers", type=positive_int, default=8)
    parser.add_argument("--shard-kb", type=positive_int, default=64)
    parser.add_argument("--latency-ms", type=non_negative_float, default=0.0,
                        help="delay every request this long (a bucket's round trip)")
    args = parser.parse_args()

    from tests.gcs_emulator import GcsEmulator

    emulator = GcsEmulator()
    try:
        emulator.create_bucket("bench")
        timings, results = {}, {}
        for name in ("serially", "spread"):
            out = f"gs://bench/{name}"
            written = upload_written(emulator, "bench", out, args.shards, args.shard_kb << 10)
            proxy = DelayingProxy(emulator.endpoint, args.latency_ms / 1000) \
                if args.latency_ms else None
            start = time.perf_counter()
            try:
                if name == "serially":
                    serially(out, written)
                else:
                    spread(out, written, args.workers)
            finally:
                timings[name] = time.perf_counter() - start
                if proxy:
                    proxy.close()
            files = emulator.objects("bench", name)
            assert not [f for f in files if f.startswith("_tmp/") and f.endswith(".tfrecord")]
            results[name] = {f: data for f, data in files.items() if not f.startswith("_tmp/")}
        assert len(results["spread"]) == 2 * args.shards and \
            results["serially"] == results["spread"], "the two ways made different files"
    finally:
        emulator.close()
    print(f"{args.shards} shards of {args.shard_kb} KB on the GCS emulator, "
          f"{args.latency_ms:g} ms per request: one after another "
          f"{timings['serially']:.1f} s; spread over {args.workers} DirectRunner threads "
          f"{timings['spread']:.1f} s (Beam's start-up included); "
          f"ratio {timings['serially'] / timings['spread']:.2f}x")


if __name__ == "__main__":
    main()
