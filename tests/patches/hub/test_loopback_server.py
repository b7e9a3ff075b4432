"""The loopback Hub itself, spoken to with plain urllib (no proxies): error headers, auth, limits."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from tests.patches.hub.loopback_server import INVALID_CREDENTIALS, LoopbackHub, git_blob_oid

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(hub: LoopbackHub, method: str, path: str, body: bytes | dict | None = None, token: str | None = None,
         content_type: str = "application/json"):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(hub.url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with OPENER.open(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def hub():
    with LoopbackHub(token="w", read_tokens=("r",), max_requests=40) as server:
        yield server


def test_commit_resolve_and_error_headers(hub):
    assert call(hub, "POST", "/api/repos/create", {"name": "repo", "organization": "me"}, token="w")[0] == 200
    assert call(hub, "POST", "/api/repos/create", {"name": "repo", "organization": "me"}, token="w")[0] == 409
    ndjson = b"\n".join(json.dumps(line).encode() for line in (
        {"key": "header", "value": {"summary": "add"}},
        {"key": "file", "value": {"path": "a.txt", "content": base64.b64encode(b"hello").decode(),
                                  "encoding": "base64"}}))
    status, _, body = call(hub, "POST", "/api/models/me/repo/commit/main", ndjson, token="w",
                           content_type="application/x-ndjson")
    assert status == 200
    oid = json.loads(body)["commitOid"]
    status, headers, body = call(hub, "GET", f"/me/repo/resolve/{oid}/a.txt")
    assert (status, body) == (200, b"hello")
    assert headers["ETag"] == f'"{git_blob_oid(b"hello")}"' and headers["X-Repo-Commit"] == oid
    assert headers["Content-Length"] == "5"
    assert call(hub, "HEAD", "/me/repo/resolve/main/a.txt")[0] == 200
    for path, code in (("/me/none/resolve/main/a.txt", "RepoNotFound"), ("/me/repo/resolve/nope/a.txt",
                                                                         "RevisionNotFound"),
                       ("/me/repo/resolve/main/b.txt", "EntryNotFound")):
        status, headers, _ = call(hub, "GET", path)
        assert (status, headers.get("X-Error-Code")) == (404, code), path
    info = json.loads(call(hub, "GET", "/api/models/me/repo")[2])
    assert info["sha"] == oid and {s["rfilename"] for s in info["siblings"]} == {".gitattributes", "a.txt"}


def test_auth(hub):
    status, headers, _ = call(hub, "GET", "/api/models/me/x", token="wrong")
    assert status == 401 and headers["X-Error-Message"] == INVALID_CREDENTIALS
    assert call(hub, "POST", "/api/repos/create", {"name": "x"})[0] == 401
    assert call(hub, "POST", "/api/repos/create", {"name": "x"}, token="r")[0] == 403
    hub.create_repo("me/secret", private=True)
    status, headers, _ = call(hub, "GET", "/api/models/me/secret")
    assert status == 401 and headers["X-Error-Code"] == "RepoNotFound"
    assert call(hub, "GET", "/api/models/me/secret", token="r")[0] == 200


def test_unknown_routes_and_request_limit(hub):
    assert call(hub, "GET", "/api/spaces/me/x")[0] == 404
    assert hub.unhandled == [("GET", "/api/spaces/me/x")]
    while len(hub.requests) < hub.max_requests:
        call(hub, "GET", "/api/whoami-v2", token="w")
    status, _, body = call(hub, "GET", "/api/whoami-v2", token="w")
    assert status == 400 and b"request limit" in body and hub.limit_hit


def test_file_metadata_lfs_and_tamper_hook(hub):
    import hashlib

    repo = hub.create_repo("me/lfs")
    weights, config = b"\x00\x01" * 50, b'{"r": 2}'
    hub._commit(repo, None, "add", {**repo.commits[repo.branches["main"]].files, "w.safetensors": weights,
                                    "adapter_config.json": config})
    sha256 = hashlib.sha256(weights).hexdigest()
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize 100\n".encode()
    pointer_oid = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    info = json.loads(call(hub, "GET", "/api/models/me/lfs/revision/main?blobs=true")[2])
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    assert siblings["w.safetensors"] == {"rfilename": "w.safetensors", "size": 100, "blobId": pointer_oid,
                                         "lfs": {"sha256": sha256, "size": 100, "pointerSize": len(pointer)}}
    assert siblings["adapter_config.json"] == {"rfilename": "adapter_config.json", "size": len(config),
                                               "blobId": hashlib.sha1(b"blob 8\0" + config).hexdigest()}
    assert json.loads(call(hub, "GET", "/api/models/me/lfs")[2])["siblings"][0].keys() == {"rfilename"}
    tree = {e["path"]: e for e in json.loads(call(hub, "GET", "/api/models/me/lfs/tree/main")[2])}
    assert tree["w.safetensors"]["lfs"] == {"oid": sha256, "size": 100, "pointerSize": len(pointer)}
    status, headers, body = call(hub, "GET", "/me/lfs/resolve/main/w.safetensors")
    assert (status, body, headers["ETag"], headers["X-Linked-Size"]) == (200, weights, f'"{sha256}"', "100")
    hub.tamper[("me/lfs", "w.safetensors")] = lambda content: content[:-1] + b"\xff"
    status, headers, body = call(hub, "GET", "/me/lfs/resolve/main/w.safetensors")
    assert body == weights[:-1] + b"\xff" and headers["ETag"] == f'"{sha256}"'  # other bytes, same claims
    assert json.loads(call(hub, "GET", "/api/models/me/lfs?blobs=1")[2])["siblings"] == info["siblings"]
