"""A local stand-in for the Hugging Face hub: a real HTTP server on 127.0.0.1.

It answers the requests huggingface_hub 2.4 makes (read from its source:
`hf_api.model_info`, `hf_api.list_repo_tree`, `file_download.get_hf_file_metadata`
and `http_get`), with the headers and error codes it parses, Range requests for
resumed downloads, and switches to break a download the ways a network does.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".model")


def git_blob_id(data: bytes) -> str:
    """`git hash-object` of `data`: what the hub lists as a file's blob id."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    gated: bool = False

    def entry(self, name: str) -> dict:
        """The hub's description of one file: size, blob id, and LFS data for big files."""
        data = self.files[name]
        if not name.endswith(LFS_SUFFIXES):
            return {"size": len(data), "blobId": git_blob_id(data)}
        sha = hashlib.sha256(data).hexdigest()
        pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\n"
                   f"size {len(data)}\n")
        return {"size": len(data), "blobId": git_blob_id(pointer.encode()),
                "lfs": {"sha256": sha, "size": len(data), "pointerSize": len(pointer)}}

    def tree_entry(self, name: str) -> dict:
        """The same, as `api/models/{repo}/tree/{rev}` lists it."""
        entry = self.entry(name)
        lfs = entry.get("lfs")
        return {"type": "file", "path": name, "oid": entry["blobId"], "size": entry["size"],
                **({"lfs": {"oid": lfs["sha256"], "size": lfs["size"],
                            "pointerSize": lfs["pointerSize"]}} if lfs else {})}

    def etag(self, name: str) -> str:
        entry = self.entry(name)
        return entry["lfs"]["sha256"] if "lfs" in entry else entry["blobId"]


@dataclass
class Faults:
    """Ways to break downloads, keyed by file name."""

    # name -> (offset, times): the first GET stops after `offset` bytes and drops the
    # connection; the next `times - 1` GETs are dropped before any response.
    drop: dict[str, tuple[int, int]] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)  # GETs seen per file
    # name -> offset: send `offset` bytes, set `stalled`, wait for `release`, then drop.
    stall: dict[str, int] = field(default_factory=dict)
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    corrupt: set[str] = field(default_factory=set)  # serve flipped bytes


class _Server(ThreadingHTTPServer):
    """Quiet when the client hangs up mid-reply (a pull stopped by a fault): that is the test."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeHub:
    """The server, its repos, the requests it saw (method, path, Range), and its faults."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.faults = Faults()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add_repo(self, repo_id: str, files: dict[str, bytes], gated: bool = False) -> str:
        """Serve `files` as `repo_id` at a commit derived from their content; returns it."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        self.repos[repo_id] = Repo(files, digest.hexdigest(), gated)
        return self.repos[repo_id].commit

    def paths_requested(self, suffix: str = "") -> list[str]:
        return [path for _, path, _ in self.requests if path.endswith(suffix)]

    def reset(self) -> None:
        self.requests.clear()
        self.faults = Faults()

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.faults.release.set()
        self._server.shutdown()
        self._server.server_close()


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+)|/tree/([^/]+)(?:/.*)?)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    """Routes the hub's endpoints; `self.server.hub` holds the repos and faults."""

    protocol_version = "HTTP/1.1"

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if m := _API.match(path):
            self._api(m.group(1), m.group(2) or m.group(3), tree=m.group(3) is not None,
                      blobs="blobs=true" in (urlsplit(self.path).query or ""))
        elif m := _RESOLVE.match(path):
            self._resolve(m.group(1), m.group(2), m.group(3), head)
        else:
            self._error(404, "RepoNotFound")

    def _repo(self, repo_id: str, revision: str | None) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
        elif revision not in (None, "main", repo.commit):
            self._error(404, "RevisionNotFound")
        else:
            return repo
        return None

    def _api(self, repo_id: str, revision: str | None, tree: bool, blobs: bool) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if tree:
            body = [repo.tree_entry(name) for name in sorted(repo.files)]
        else:
            siblings = [{"rfilename": name, **(repo.entry(name) if blobs else {})}
                        for name in sorted(repo.files)]
            body = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                    "gated": "auto" if repo.gated else False, "siblings": siblings}
        self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, repo_id: str, revision: str, name: str, head: bool) -> None:
        repo = self._repo(repo_id, revision)
        if repo is None:
            return
        if repo.gated:  # what the hub answers an anonymous request for a gated file
            return self._error(401, "GatedRepo")
        if name not in repo.files:
            return self._error(404, "EntryNotFound")
        if not head:
            self.hub.faults.gets[name] = self.hub.faults.gets.get(name, 0) + 1
        _, times = self.hub.faults.drop.get(name, (0, 0))
        if not head and 1 < self.hub.faults.gets[name] <= times:
            self.close_connection = True  # dropped before any response
            return
        data = repo.files[name]
        if name in self.hub.faults.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start = _range_start(self.headers.get("Range"))
        headers = {"ETag": f'"{repo.etag(name)}"', "X-Repo-Commit": repo.commit,
                   "Accept-Ranges": "bytes"}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if head:
            return self._send(200, b"", {**headers, "Content-Length": str(len(data))})
        self._send_body(206 if start else 200, body, headers, name, start)

    def _send_body(self, status, body, headers, name, start) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        offset, times = self.hub.faults.drop.get(name, (0, 0))
        stall = self.hub.faults.stall.get(name)
        if times and self.hub.faults.gets[name] == 1:
            self.wfile.write(body[: offset - start])
            self.close_connection = True
        elif stall is not None and not self.hub.faults.release.is_set():
            self.wfile.write(body[: stall - start])
            self.wfile.flush()
            self.hub.faults.stalled.set()
            self.hub.faults.release.wait(60)
            self.close_connection = True
        else:
            self.wfile.write(body)

    def _error(self, status: int, code: str) -> None:
        self._send(status, json.dumps({"error": code}).encode(),
                   {"X-Error-Code": code, "Content-Type": "application/json"})

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _range_start(header: str | None) -> int:
    m = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(m.group(1)) if m else 0
