"""A loopback Hugging Face Hub for the tests: in-memory model repos served on 127.0.0.1 by a background thread.

It speaks the part of the Hub HTTP protocol that the real ``huggingface_hub`` client (2.x, httpx2) uses for
``create_repo``, ``create_branch``, ``create_tag``, ``upload_folder`` / ``create_commit`` (regular, base64-inline
uploads), ``model_info`` / ``repo_info``, ``list_repo_tree``, ``hf_hub_download`` / ``snapshot_download`` and
``ModelCard.load``::

    POST /api/repos/create                                   {"name", "organization", "visibility"|"private"}
    POST /api/validate-yaml                                  {"content", "repoType"} -> {"errors", "warnings"}
    GET  /api/whoami-v2
    GET  /api/models/{repo}[/revision/{rev}][?blobs=true]    {"id", "sha", "private", "siblings", ...}; with blobs,
                                                             siblings carry "size", "blobId" and "lfs"
    GET  /api/models/{repo}/tree/{rev}[/{path}]              [{"type": "file", "path", "size", "oid", "lfs"?}]
    POST /api/models/{repo}/preupload/{rev}                  every file -> {"uploadMode": "regular", "oid"}
    POST /api/models/{repo}/commit/{rev}                     NDJSON: header, file (base64), deletedFile/Folder
    POST /api/models/{repo}/branch/{branch}                  {"startingPoint"?}
    POST /api/models/{repo}/tag/{rev}                        {"tag", "message"?}
    HEAD|GET /{repo}/resolve/{rev}/{path}                    ETag, X-Repo-Commit, Content-Length (+ X-Linked-*)

Files matching ``lfs_patterns`` (default ``*.safetensors``, as the ``.gitattributes`` of a new repo says) are
*reported* as Git LFS files, as the real Hub does: ``lfs: {oid: sha256, size, pointerSize}`` in the metadata, the git
blob id of their LFS pointer as ``oid`` / ``blobId``, and ``ETag`` / ``X-Linked-Etag`` = the SHA-256 and
``X-Linked-Size`` on ``resolve``. Test hook ``tamper``: ``{(repo_id, path): function(stored bytes) -> bytes}``;
``resolve`` serves what the function returns instead of the stored content, with the stored file's headers (its
ETag; the served length as ``Content-Length``), while every metadata endpoint keeps describing the stored file, as
a corrupting mirror or proxy would.

Errors carry the headers ``huggingface_hub.utils.hf_raise_for_status`` maps to its exception classes:
``X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`` with 404 (401 for a private repo read without a
valid token, as the real Hub does), ``X-Error-Message: Invalid credentials in Authorization header`` with 401 for a
wrong token, 403 for a read-only token on a write, 409 for an existing repo / branch / tag.

Safety: it binds 127.0.0.1 only, answers 403 to any other peer, refuses bodies over ``max_body`` bytes and answers
400 to every request after ``max_requests`` (``limit_hit`` is then set), so that a client stuck in a loop fails fast
instead of hanging a test. ``LFS`` uploads are not implemented (``preupload`` always answers ``regular``, and an
``lfsFile`` commit line is a 400): keep test files small. Unknown routes answer 404 without an error code and are
recorded in ``unhandled``.

Usage::

    with LoopbackHub(token="hf_test") as hub:
        env = {"HF_ENDPOINT": hub.url, ...}   # run huggingface_hub in a subprocess with this endpoint
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_USER = "loopback-user"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_SHA_RE = re.compile(r"[0-9a-f]{40}")


def git_blob_oid(content: bytes) -> str:
    """The git blob id (sha1 of ``blob <size>\\0<content>``) that the Hub reports for regular files."""
    return hashlib.sha1(b"blob " + str(len(content)).encode() + b"\0" + content).hexdigest()


def lfs_pointer(content: bytes) -> bytes:
    """The Git LFS pointer file git stores for an LFS-tracked file (its blob id is the file's ``oid``)."""
    sha256 = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n".encode()


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        if _SHA_RE.fullmatch(revision):
            return self.commits.get(revision)
        return None


class HubError(Exception):
    """An HTTP error answer: status, JSON error message, extra headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = dict(body or {})
        self.headers = dict(headers or {})
        if code is not None:
            self.headers["X-Error-Code"] = code


class LoopbackHub:
    """In-memory Hub on ``127.0.0.1:<random port>``; ``token`` may read and write, ``read_tokens`` may only read."""

    def __init__(self, token: str = "hf_loopback_write", read_tokens: tuple[str, ...] = (),
                 max_requests: int = 2000, max_body: int = 32 * 1024 * 1024, user: str = DEFAULT_USER,
                 lfs_patterns: tuple[str, ...] = ("*.safetensors",)) -> None:
        self.token = token
        self.lfs_patterns = tuple(lfs_patterns)
        self.tamper: dict[tuple[str, str], Callable[[bytes], bytes]] = {}  # (repo_id, path) -> what resolve serves
        self.read_tokens = set(read_tokens)
        self.max_requests = max_requests
        self.max_body = max_body
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.unhandled: list[tuple[str, str]] = []
        self.rejected_peers: list[str] = []
        self.limit_hit = False
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None  # kept after stop(): tests point clients at the dead port
        self._clock = 0

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> LoopbackHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._address = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port it listens (or, after ``stop``, listened) on."""
        assert self._address is not None, "the loopback hub was never started"
        return self._address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------------------------------------- repo state
    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        """Create a repo with an initial commit holding ``.gitattributes``, as the Hub does."""
        with self.lock:
            if repo_id in self.repos:  # the Hub's 409 carries the url: create_repo(exist_ok=True) reads it
                raise HubError(409, "You already created this model repo", body={"url": f"{self.url}/{repo_id}"})
            repo = Repo(repo_id=repo_id, private=private)
            self.repos[repo_id] = repo
            self._commit(repo, None, "initial commit", {".gitattributes": b"*.safetensors filter=lfs diff=lfs\n"})
            return repo

    def _commit(self, repo: Repo, branch: str | None, message: str, files: dict[str, bytes]) -> Commit:
        parent = repo.branches.get(branch or "main")
        self._clock += 1
        date = datetime.fromtimestamp(1_700_000_000 + self._clock, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        digest = hashlib.sha1()
        digest.update(f"{repo.repo_id}\0{parent}\0{message}\0{date}\0".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_oid(files[path]).encode() + b"\0")
        commit = Commit(oid=digest.hexdigest(), parent=parent, message=message, files=dict(files), date=date)
        repo.commits[commit.oid] = commit
        repo.branches[branch or "main"] = commit.oid
        return commit

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (for assertions)."""
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            assert commit is not None, f"{repo_id}@{revision} does not exist"
            return dict(commit.files)

    def history(self, repo_id: str, branch: str = "main") -> list[Commit]:
        """Commits of ``branch``, newest first."""
        with self.lock:
            repo = self.repos[repo_id]
            out, oid = [], repo.branches.get(branch)
            while oid is not None:
                out.append(repo.commits[oid])
                oid = repo.commits[oid].parent
            return out

    def file_metadata(self, path: str, content: bytes) -> dict[str, Any]:
        """``{"size", "oid", "lfs"?}`` of a stored file, as the Hub's tree / blobs metadata describes it."""
        if not any(fnmatch.fnmatch(path, pattern) for pattern in self.lfs_patterns):
            return {"size": len(content), "oid": git_blob_oid(content)}
        pointer = lfs_pointer(content)
        return {"size": len(content), "oid": git_blob_oid(pointer), "lfs": {
            "oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": len(pointer)}}

    def paths_requested(self, suffix: str) -> list[str]:
        return [path for _, path, _ in self.requests if urlsplit(path).path.endswith(suffix)]


# ---------------------------------------------------------------------------------------------------- handler
class _Handler(BaseHTTPRequestHandler):
    hub: LoopbackHub
    protocol_version = "HTTP/1.0"
    server_version = "LoopbackHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass

    # one entry point for every method
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        status = 500
        try:
            if self.client_address[0] != "127.0.0.1":
                hub.rejected_peers.append(self.client_address[0])
                raise HubError(403, "the loopback hub only answers 127.0.0.1")
            with hub.lock:
                count = len(hub.requests) + 1
            if count > hub.max_requests:
                hub.limit_hit = True
                raise HubError(400, f"loopback hub request limit ({hub.max_requests}) reached")
            body = self._read_body()
            status, headers, payload = self._route(method, body)
        except HubError as exc:
            status, headers = exc.status, exc.headers
            payload = json.dumps({"error": exc.message, **exc.body}).encode()
            headers.setdefault("Content-Type", "application/json")
        except Exception as exc:  # noqa: BLE001 - a server bug: answer 400 (a 500 makes the client retry for seconds)
            status, headers = 400, {"Content-Type": "application/json"}
            payload = json.dumps({"error": f"loopback hub internal error: {type(exc).__name__}: {exc}"}).encode()
        with hub.lock:
            hub.requests.append((method, self.path, status))
        self._send(method, status, headers, payload)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body:
            raise HubError(413, f"body of {length} bytes is over the loopback hub limit ({self.hub.max_body})")
        return self.rfile.read(length) if length else b""

    def _send(self, method: str, status: int, headers: dict[str, str], payload: bytes) -> None:
        self.send_response(status)
        headers = {"Content-Type": "application/json", **headers}
        headers.setdefault("Content-Length", str(len(payload)))
        headers["X-Request-Id"] = f"loopback-{len(self.hub.requests)}"
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    # ------------------------------------------------------------------------------------------------- auth
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None

    def _check_token(self, write: bool) -> str | None:
        """The token if valid; 401 for a wrong token, or for none on a write; 403 for a read-only one on a write."""
        token = self._token()
        hub = self.hub
        if token is not None and token != hub.token and token not in hub.read_tokens:
            raise HubError(401, INVALID_CREDENTIALS, headers={"X-Error-Message": INVALID_CREDENTIALS})
        if write and token is None:
            raise HubError(401, "You must be authenticated to write to the loopback hub",
                           headers={"X-Error-Message": "Unauthorized"})
        if write and token != hub.token:
            raise HubError(403, "You don't have the rights to write to this repository (read-only token)",
                           headers={"X-Error-Message": "Read-only token"})
        return token

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        token = self._check_token(write)
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        if repo.private and token is None:
            # the real Hub hides private repos behind a 401 + RepoNotFound
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    @staticmethod
    def _commit_of(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    # ----------------------------------------------------------------------------------------------- routes
    def _route(self, method: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        query = parse_qs(parts.query)
        with self.hub.lock:
            if method == "POST" and segments == ["api", "repos", "create"]:
                return self._create_repo(body)
            if method == "POST" and segments == ["api", "validate-yaml"]:
                return self._validate_yaml(body)
            if method == "GET" and segments == ["api", "whoami-v2"]:
                token = self._check_token(write=True)
                return _json({"type": "user", "name": self.hub.user, "auth": {"accessToken": {
                    "role": "write" if token == self.hub.token else "read"}}})
            if len(segments) >= 4 and segments[:2] == ["api", "models"]:
                return self._api_models(method, segments[2:], query, body)
            if "resolve" in segments and method in ("GET", "HEAD"):
                i = segments.index("resolve")
                if i in (1, 2) and len(segments) >= i + 3:
                    return self._resolve("/".join(segments[:i]), segments[i + 1], "/".join(segments[i + 2:]))
        self.hub.unhandled.append((method, self.path))
        raise HubError(404, f"not implemented by the loopback hub: {method} {parts.path}")

    def _create_repo(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self._check_token(write=True)
        data = json.loads(body or b"{}")
        if data.get("type") not in (None, "model"):
            raise HubError(400, "the loopback hub only hosts model repos")
        name = data.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name) or "--" in name or ".." in name:
            raise HubError(400, f"invalid repo name {name!r}")
        repo_id = f"{data.get('organization') or self.hub.user}/{name}"
        private = data.get("visibility") == "private" or bool(data.get("private"))
        self.hub.create_repo(repo_id, private=private)
        return _json({"url": f"{self._base()}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        content = json.loads(body or b"{}").get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, flags=re.DOTALL)
        if match is None:
            return _json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return _json({"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, 400)
        if not isinstance(meta, dict):
            return _json({"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    def _api_models(self, method: str, rest: list[str], query: dict[str, list[str]],
                    body: bytes) -> tuple[int, dict[str, str], bytes]:
        repo_id, tail = "/".join(rest[:2]), rest[2:]
        blobs = (query.get("blobs") or ["false"])[0].lower() in ("1", "true")
        if method == "GET" and not tail:
            return self._model_info(self._repo(repo_id), "main", blobs)
        if method == "GET" and len(tail) == 2 and tail[0] == "revision":
            return self._model_info(self._repo(repo_id), tail[1], blobs)
        if method == "GET" and len(tail) >= 2 and tail[0] == "tree":
            return self._tree(self._repo(repo_id), tail[1], "/".join(tail[2:]), query)
        if method == "POST" and len(tail) == 2 and tail[0] == "preupload":
            return self._preupload(self._repo(repo_id, write=True), tail[1], body)
        if method == "POST" and len(tail) == 2 and tail[0] == "commit":
            return self._commit_route(self._repo(repo_id, write=True), tail[1], query, body)
        if method == "POST" and len(tail) == 2 and tail[0] == "branch":
            return self._branch(self._repo(repo_id, write=True), tail[1], body)
        if method == "POST" and len(tail) == 2 and tail[0] == "tag":
            return self._tag(self._repo(repo_id, write=True), tail[1], body)
        self.hub.unhandled.append((method, self.path))
        raise HubError(404, f"not implemented by the loopback hub: {method} {self.path}")

    def _model_info(self, repo: Repo, revision: str, blobs: bool = False) -> tuple[int, dict[str, str], bytes]:
        commit = self._commit_of(repo, revision)
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                meta = self.hub.file_metadata(path, commit.files[path])
                sibling.update({"size": meta["size"], "blobId": meta["oid"]})
                if "lfs" in meta:
                    sibling["lfs"] = {"sha256": meta["lfs"]["oid"], "size": meta["lfs"]["size"],
                                      "pointerSize": meta["lfs"]["pointerSize"]}
            siblings.append(sibling)
        card = _front_matter(commit.files.get("README.md", b""))
        return _json({
            "id": repo.repo_id, "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "lastModified": commit.date, "createdAt": repo.commits[min(repo.commits,
                                                                     key=lambda o: repo.commits[o].date)].date,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": list(card.get("tags") or []) if isinstance(card, dict) else [],
            "library_name": card.get("library_name") if isinstance(card, dict) else None,
            "cardData": card if isinstance(card, dict) else None,
            "siblings": siblings,
        })

    def _tree(self, repo: Repo, revision: str, prefix: str,
              query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        commit = self._commit_of(repo, revision)
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for path in sorted(commit.files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            relative = path[len(prefix) + 1:] if prefix else path
            if "/" in relative and not recursive:
                folders.add((prefix + "/" if prefix else "") + relative.split("/")[0])
                continue
            if recursive:
                parents = path.split("/")[:-1]
                for i in range(len(prefix.split("/")) if prefix else 0, len(parents)):
                    folders.add("/".join(parents[: i + 1]))
            entries.append({"type": "file", "path": path, **self.hub.file_metadata(path, commit.files[path])})
        if prefix and not entries and not folders:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        entries += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0}
                    for f in sorted(folders)]
        return _json(entries)

    def _preupload(self, repo: Repo, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        commit = self._commit_of(repo, revision)
        files = json.loads(body or b"{}").get("files", [])
        out = []
        for item in files:
            existing = commit.files.get(item["path"])
            out.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                        "oid": git_blob_oid(existing) if existing is not None else None})
        return _json({"files": out, "commitOid": commit.oid})

    def _commit_route(self, repo: Repo, revision: str, query: dict[str, list[str]],
                      body: bytes) -> tuple[int, dict[str, str], bytes]:
        if (query.get("create_pr") or ["0"])[0] not in ("0", "false", ""):
            raise HubError(400, "pull requests are not implemented by the loopback hub")
        branch = unquote(revision)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch} (commits go to a branch)", "RevisionNotFound")
        files = dict(repo.commits[repo.branches[branch]].files)
        header: dict[str, Any] = {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value") or {}
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[_clean_path(value["path"])] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                path = _clean_path(value["path"])
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                folder = _clean_path(value["path"]).rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(folder)}
            elif key == "lfsFile":
                raise HubError(400, "LFS uploads are not implemented by the loopback hub (keep test files small)")
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.branches[branch]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        message = header.get("summary") or ""
        if not message:
            raise HubError(400, "commit summary is required")
        commit = self.hub._commit(repo, branch, message, files)
        return _json({"success": True, "commitOid": commit.oid,
                      "commitUrl": f"{self._base()}/{repo.repo_id}/commit/{commit.oid}", "pullRequestUrl": None})

    def _branch(self, repo: Repo, branch: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        branch = unquote(branch)
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        repo.branches[branch] = self._commit_of(repo, start).oid
        return _json({})

    def _tag(self, repo: Repo, revision: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        tag = json.loads(body or b"{}").get("tag")
        if not tag:
            raise HubError(400, "tag name is required")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = self._commit_of(repo, revision).oid
        return _json({})

    def _resolve(self, repo_id: str, revision: str, path: str) -> tuple[int, dict[str, str], bytes]:
        repo = self._repo(repo_id)
        commit = self._commit_of(repo, revision)
        content = commit.files.get(path)
        if content is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        meta = self.hub.file_metadata(path, content)
        headers = {"ETag": f'"{meta["oid"]}"', "X-Repo-Commit": commit.oid,
                   "Content-Type": "application/octet-stream", "Accept-Ranges": "none",
                   "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"'}
        if "lfs" in meta:  # the real Hub names LFS files by their sha256
            headers.update({"ETag": f'"{meta["lfs"]["oid"]}"', "X-Linked-Etag": f'"{meta["lfs"]["oid"]}"',
                            "X-Linked-Size": str(meta["size"])})
        tamper = self.hub.tamper.get((repo.repo_id, path))
        content = tamper(content) if tamper is not None else content
        headers["Content-Length"] = str(len(content))
        return 200, headers, content

    def _base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"


def _json(data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _clean_path(path: str) -> str:
    path = path.strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(400, f"invalid path in repo: {path!r}")
    return path


def _front_matter(readme: bytes) -> dict | None:
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", readme.decode("utf-8", "replace"), flags=re.DOTALL)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def wait_until_closed(port: int, timeout: float = 2.0) -> None:
    """Return once nothing accepts connections on 127.0.0.1:``port`` (after ``stop``)."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
