"""Downloads against a local HTTP server on 127.0.0.1: progress, resume, checksum, offline."""

from __future__ import annotations

import hashlib
import http.server
import threading

import pytest

from samlib import models
from samlib.errors import ChecksumError, DownloadError, ModelNotDownloadedError
from samlib.models.arch import VIT_B
from samlib.models.download import download_file

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: spans two read chunks
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path != "/file.bin":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            # Simulate a dropped connection: send part of the body, then close.
            self.wfile.write(body[: srv.cut_after])
            self.wfile.flush()
            srv.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        self.honour_range = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/file.bin"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def test_download_progress_and_checksum(server, tmp_path):
    calls = []
    dest = tmp_path / "sub" / "file.bin"
    digest = download_file(server.url, dest, sha256=SHA, progress=lambda d, t: calls.append((d, t)))
    assert digest == SHA
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()
    assert calls[0] == (0, len(PAYLOAD))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(calls) >= 3  # one call per chunk
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_resume_after_interruption_uses_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    server.cut_after = 300_000
    with pytest.raises(DownloadError, match="resume"):
        download_file(server.url, dest, sha256=SHA)
    part = tmp_path / "file.bin.part"
    assert not dest.exists()
    assert part.stat().st_size == 300_000
    assert download_file(server.url, dest, sha256=SHA) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/file.bin", "bytes=300000-")


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    server.honour_range = False
    assert download_file(server.url, dest, sha256=SHA) == SHA
    assert dest.read_bytes() == PAYLOAD


def test_concurrent_downloads_fetch_once(server, tmp_path):
    dest = tmp_path / "file.bin"
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(download_file(server.url, dest, sha256=SHA)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [SHA] * 3
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_checksum_mismatch_removes_file(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(ChecksumError, match=SHA):
        download_file(server.url, dest, sha256="0" * 64)
    assert not dest.exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_cached_file_never_touches_network(server, tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    assert download_file(server.url, dest, sha256=SHA) == SHA
    assert server.requests == []


@pytest.mark.parametrize(
    "url, match",
    [("/missing.bin", "HTTP 404"), ("http://127.0.0.1:1/file.bin", "cannot reach")],
)
def test_http_errors_are_download_errors(server, tmp_path, url, match):
    if url.startswith("/"):
        url = server.url.replace("/file.bin", url)
    with pytest.raises(DownloadError, match=match):
        download_file(url, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()


def test_non_http_url_refused(tmp_path):
    with pytest.raises(DownloadError, match="file:///etc/passwd"):
        download_file("file:///etc/passwd", tmp_path / "x")


@pytest.fixture
def registered(server, tmp_path, monkeypatch):
    """A registry entry without a published hash, served by the local server."""
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path / "cache"))
    entry = models.ModelEntry(
        name="test_remote",
        config=VIT_B,
        url=server.url,
        size=None,
        sha256=None,
        description="test",
        file_format="sam",
        filename="remote.bin",
    )
    monkeypatch.setitem(models.REGISTRY, entry.name, entry)
    return entry


def test_download_model_records_hash_and_verifies_later(registered, server):
    with pytest.raises(ModelNotDownloadedError, match="download test_remote"):
        models.load_model("test_remote")
    path = models.download_model("test_remote")
    assert path == models.cache_dir() / "checkpoints" / "remote.bin"
    assert models.model_status("test_remote").cached
    assert models.verify_cached("test_remote") == SHA
    n = len(server.requests)
    models.download_model("test_remote")  # cached: no request
    assert len(server.requests) == n
    # The file changes behind our back: the recorded hash catches it.
    path.write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(ChecksumError, match=SHA):
        models.verify_cached("test_remote")
