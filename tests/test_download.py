"""Downloads against a local HTTP server on 127.0.0.1: progress, resume, checksum, offline,
misbehaving servers, and several processes downloading one file at once."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from samlib import models
from samlib.errors import ChecksumError, DownloadError, ModelNotDownloadedError
from samlib.models.arch import VIT_B
from samlib.models.download import download_file

ROOT = Path(__file__).resolve().parents[1]
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
            # range_from: a server that answers a Range request from another byte.
            start = start if srv.range_from is None else srv.range_from
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        if srv.endless:
            self.close_connection = True  # the body ends when the connection does
        else:
            self.send_header("Content-Length", srv.content_length or str(len(body)))
        self.end_headers()
        try:
            self._send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _send(self, body: bytes) -> None:
        srv = self.server
        if srv.cut_after is not None:
            # Simulate a dropped connection: send part of the body, then close.
            self.wfile.write(body[: srv.cut_after])
            self.wfile.flush()
            srv.cut_after = None
            self.close_connection = True
        elif srv.stall_after is not None:
            # Send part of the body, then nothing until the test ends.
            self.wfile.write(body[: srv.stall_after])
            self.wfile.flush()
            srv.stall_after = None
            srv.release.wait(30)
            self.close_connection = True
        elif srv.trickle:
            # 16 bytes every 10 ms (1.6 kB/s), for at most 5 s.
            for i in range(0, min(len(body), 8000), 16):
                if srv.release.wait(0.01):
                    break
                self.wfile.write(body[i : i + 16])
                self.wfile.flush()
            self.close_connection = True
        elif srv.slow:
            # 64 KiB every 20 ms, so that two clients overlap.
            for i in range(0, len(body), 1 << 16):
                self.wfile.write(body[i : i + (1 << 16)])
                self.wfile.flush()
                time.sleep(0.02)
        else:
            self.wfile.write(body)
        if srv.endless:
            # The right bytes, then junk: 64 MiB at most, so that a client that never
            # stops reading still ends.
            for _ in range(64):
                self.wfile.write(b"\xff" * (1 << 20))


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        self.stall_after: int | None = None
        self.range_from: int | None = None
        self.content_length: str | None = None
        self.honour_range = True
        self.endless = False
        self.trickle = False
        self.slow = False
        self.release = threading.Event()  # set at teardown: stalled replies end

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/file.bin"


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.release.set()
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


def test_endless_reply_stops_at_the_expected_size(server, tmp_path):
    server.endless = True  # no Content-Length, and more bytes than the registry's size
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match=f"more than the expected {len(PAYLOAD)} bytes"):
        download_file(server.url, dest, size=len(PAYLOAD))
    assert not dest.exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_server_size_differing_from_the_expected_size_is_refused(server, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match=f"{len(PAYLOAD)} bytes.*expected {len(PAYLOAD) + 1}"):
        download_file(server.url, dest, size=len(PAYLOAD) + 1)
    assert not dest.exists()


@pytest.mark.parametrize("range_from", [0, 500, 2000])
def test_resume_answered_from_the_wrong_byte_restarts(server, tmp_path, range_from):
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    server.range_from = range_from  # asked for bytes=1000-, answers from range_from
    assert download_file(server.url, dest) == SHA  # no hash pinned: only the offset guards
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()


def test_non_numeric_content_length_is_a_download_error(server, tmp_path):
    server.content_length = "lots"
    with pytest.raises(DownloadError, match="Content-Length 'lots'"):
        download_file(server.url, tmp_path / "file.bin")
    assert not (tmp_path / "file.bin").exists()


def test_stalled_server_hits_the_stall_timeout_and_resumes_later(server, tmp_path):
    dest = tmp_path / "file.bin"
    server.stall_after = 1000
    with pytest.raises(DownloadError, match="stall timeout"):
        download_file(server.url, dest, stall_timeout=0.5)
    assert not dest.exists()
    assert (tmp_path / "file.bin.part").read_bytes() == PAYLOAD[:1000]
    assert download_file(server.url, dest, sha256=SHA) == SHA
    assert server.requests[-1] == ("/file.bin", "bytes=1000-")


def test_trickling_server_hits_the_deadline(server, tmp_path):
    server.trickle = True  # never stalls for long, never finishes
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="deadline of 1 s"):
        download_file(server.url, dest, deadline=1.0, stall_timeout=10.0)
    assert not dest.exists()


# A download in another process: it says "ready" once imported, waits for a line on
# stdin, downloads, and prints the SHA-256 or the error.
_CHILD = """
import sys
from samlib.models.download import download_file
print("ready", flush=True)
sys.stdin.readline()
try:
    print(download_file(sys.argv[1], sys.argv[2], sha256=sys.argv[3]), flush=True)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
"""


@pytest.fixture
def child():
    """Start download processes (see ``_CHILD``); the test ends them if it has not."""
    procs: list[subprocess.Popen] = []

    def start(url: str, dest: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, url, str(dest), SHA],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _go(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


@pytest.mark.slow
def test_two_processes_download_one_file_once(server, tmp_path, child):
    server.slow = True  # each download takes a while, so the two would overlap
    dest = tmp_path / "cache" / "file.bin"
    procs = [child(server.url, dest) for _ in range(2)]
    for proc in procs:
        _go(proc)
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert outputs == [SHA + "\n"] * 2
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "cache" / "file.bin.part").exists()
    assert len(server.requests) == 1  # the second process found the verified file


@pytest.mark.slow
def test_download_waits_for_a_live_owner_and_not_for_a_dead_one(server, tmp_path, child):
    dest = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    server.stall_after = 300_000
    owner = child(server.url, dest)
    _go(owner)
    for _ in range(1200):  # until the owner has written part of the file
        if part.is_file() and part.stat().st_size > 0:
            break
        assert owner.poll() is None
        time.sleep(0.05)
    else:
        pytest.fail("the owner process never started writing")
    with pytest.raises(DownloadError, match="another download of file.bin"):
        download_file(server.url, dest, deadline=0.5)
    owner.kill()
    owner.communicate()
    kept = part.stat().st_size
    # The dead owner's lock file blocks nothing; its .part file is resumed.
    assert download_file(server.url, dest, sha256=SHA) == SHA
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/file.bin", f"bytes={kept}-")
