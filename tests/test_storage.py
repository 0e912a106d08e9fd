"""Storage and Syncer against real local folders and a real S3 API server (moto in server mode)."""

import json
import os
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fsspec.registry import _registry as fsspec_registry
from pydantic import BaseModel
from s3server import KEY_ID, SECRET, S3Server, use_server

import runner.store.storage as storage_module
from runner.errors import UserError
from runner.store.storage import Storage
from runner.store.sync import Syncer

# A folder name that a shell or a URL would trip over.
AWKWARD = "my results 'single' \"double\""
MB = 1 << 20


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `check` until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout}s: {check}")
        time.sleep(0.05)


@pytest.fixture
def bucket(s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    use_server(monkeypatch, s3server)
    return s3server.make_bucket(f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def s3(bucket: str) -> Storage:
    return Storage.open(f"s3://{bucket}/{AWKWARD}", create=True)


@pytest.fixture
def local(tmp_path: Path) -> Storage:
    return Storage.open(tmp_path / AWKWARD, create=True)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> Storage:
    return request.getfixturevalue(request.param)


class Model(BaseModel):
    name: str
    value: float


# ---- both kinds ----


def test_round_trips(store: Storage) -> None:
    store.check()
    store.write_bytes("a/b/raw.bin", b"\x00\x01\xff")
    store.write_text("text.txt", "héllo\n")
    store.write_json("plain.json", {"x": [1, 2], "when": Path("/p")})
    store.write_json("model.json", Model(name="m", value=1.5))
    store.write_bytes("bad.json", b"{not json")
    assert store.read_bytes("a/b/raw.bin") == b"\x00\x01\xff"
    assert store.read_text("text.txt") == "héllo\n"
    assert store.read_json("plain.json") == {"x": [1, 2], "when": "/p"}
    assert Model.model_validate(store.read_json("model.json")) == Model(name="m", value=1.5)
    assert store.read_json("bad.json") is None
    assert store.read_bytes("missing") is None
    assert store.read_text("a/missing.txt") is None
    assert store.read_json("missing.json") is None
    store.write_text("text.txt", "replaced")
    assert store.read_text("text.txt") == "replaced"


def test_listing_remove_move(store: Storage) -> None:
    store.write_text("a/b.txt", "b")
    store.write_text("a/c/d.txt", "dd")
    store.write_text("ab.txt", "sibling with the same prefix")
    store.write_text("e.txt", "eee")
    assert store.listdir() == ["a", "ab.txt", "e.txt"]
    assert store.listdir("a") == ["b.txt", "c"]
    assert store.listdir("missing") == []
    assert store.listdir("e.txt") == []
    assert store.files("a") == {"b.txt": 1, "c/d.txt": 2}
    assert store.files("missing") == {}
    assert store.exists("a") and store.exists("a/b.txt") and not store.exists("zz")
    assert store.isdir("a") and not store.isdir("e.txt") and not store.isdir("zz")

    store.remove("a/c")
    store.remove("missing")  # fine
    assert store.files("a") == {"b.txt": 1}
    store.remove("a")
    assert store.listdir() == ["ab.txt", "e.txt"]  # 'ab.txt' shares the prefix 'a' on S3 and stays

    store.write_text("src/x/y.txt", "y")
    store.move("src", "dst")
    assert store.files("dst") == {"x/y.txt": 1} and not store.exists("src")
    store.write_text("src/other.txt", "o")
    with pytest.raises(FileExistsError):
        store.move("src", "dst")  # a folder goes to a place that must not exist
    with pytest.raises(FileNotFoundError):
        store.move("nothing", "else")
    store.move("e.txt", "ab.txt")  # a file replaces one
    assert store.read_text("ab.txt") == "eee" and not store.exists("e.txt")

    store.remove("")
    assert store.files() == {}


def test_child_and_names(store: Storage) -> None:
    job = store.child("suite", "job")
    job.write_text("log.txt", "x")
    assert store.files() == {"suite/job/log.txt": 1}
    assert job.url == f"{store.url}/suite/job" and str(job) == job.url
    assert job.name == "job" and job.parent_name == "suite"
    assert job.path("log.txt").endswith("/suite/job/log.txt")
    assert job.is_local == store.is_local
    for bad in ["", ".", "..", "a/b", "a\nb", "a\\b"]:
        with pytest.raises(ValueError):
            store.child(bad)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a\x00b", "a\nb", "a/../b", "a\\b", "", "a//b", "./a", "a/"])
def test_names_cannot_escape(local: Storage, s3: Storage, bad: str) -> None:
    for store in (local, s3):
        with pytest.raises(ValueError):
            store.write_bytes(bad, b"x")
        with pytest.raises(ValueError):
            store.read_bytes(bad)
    assert not (local.local.parent / "x").exists()


def peak_memory(action: Callable[[], object]) -> int:
    """The peak of Python allocations while `action` runs, in bytes."""
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_upload_download_streamed(store: Storage, tmp_path: Path) -> None:
    # Streamed means memory bounded by a few upload blocks (the buffer, the part, the HTTP body), whatever the size:
    # so the file is larger than that bound.
    block = storage_module._UPLOAD_BLOCK
    size = 5 * block + 123
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(size))
    store.write_text("spec.json", "{}")  # the first request loads botocore's service models: ~12 MB, once
    peak = peak_memory(lambda: store.upload(src, "checkpoints/last.pt"))
    assert peak < 4 * block < size, f"upload held {peak / MB:.1f} MiB: not streamed"
    assert store.files("checkpoints") == {"last.pt": size}

    out = tmp_path / "out" / "last.pt"
    peak = peak_memory(lambda: store.download("checkpoints/last.pt", out))
    assert peak < 4 * block, f"download held {peak / MB:.1f} MiB: not streamed"
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["last.pt"]  # no temp file left

    tree = tmp_path / "tree"
    assert store.download_tree("", tree, skip=("spec.json",)) == 1
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()) == ["checkpoints/last.pt"]
    with pytest.raises(FileNotFoundError):
        store.download("missing.bin", tmp_path / "m.bin")
    assert not (tmp_path / "m.bin").exists()


# ---- local only ----


def test_local_write_is_atomic(local: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    local.write_text("status.json", "old")
    folder = local.local
    seen: list[str] = []

    def failing_fsync(fd: int) -> None:
        seen.extend(os.listdir(folder))  # the temp file, fully written, beside the target
        raise OSError("disk gone")

    monkeypatch.setattr(storage_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk gone"):
        local.write_text("status.json", "new")
    monkeypatch.undo()
    assert any(n.startswith(".status.json.") and n.endswith(".tmp") for n in seen)
    assert local.read_text("status.json") == "old"
    assert os.listdir(folder) == ["status.json"]


def test_local_symlink_out_of_root_refused(tmp_path: Path) -> None:
    root = tmp_path / AWKWARD
    outside = tmp_path / "outside"
    (root / "inside").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "inside")
    store = Storage.open(root, create=True)
    src = tmp_path / "f.txt"
    src.write_text("x")
    for write in (
        lambda: store.write_text("out/x.txt", "x"),
        lambda: store.write_text("out/new/deeper/x.txt", "x"),
        lambda: store.upload(src, "out/x.txt"),
        lambda: store.child("out").write_text("x.txt", "x"),
        lambda: store.remove("out/x.txt"),
        lambda: store.move("in", "out/moved"),
    ):
        with pytest.raises(ValueError, match="outside"):
            write()
    assert list(outside.iterdir()) == []
    store.write_text("in/ok.txt", "fine")  # a link that stays inside the root is fine
    assert (root / "inside" / "ok.txt").read_text() == "fine"


def test_local_check(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        Storage.open(a_file, create=True).check()
    with pytest.raises(UserError, match="is a file"):
        Storage.open(a_file / "below", create=True).check()
    with pytest.raises(UserError, match="does not exist"):
        Storage.open(tmp_path / "missing").check()
    fresh = Storage.open(tmp_path / "new" / AWKWARD, create=True)
    fresh.check()
    assert not (tmp_path / "new").exists()  # check creates nothing: the first write does
    fresh.write_text("x", "1")
    assert (tmp_path / "new" / AWKWARD / "x").read_text() == "1"
    assert Storage.open(f"file://{tmp_path}/new").local == tmp_path / "new"
    assert Storage.open("~").local == Path.home()
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="cannot write"):
            Storage.open(locked / "results", create=True).check()
        Storage.open(locked).check()  # reading is fine


# ---- opening URLs ----


def test_open_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError) as err:
        Storage.open("foo://x/y")
    msg = str(err.value)
    assert "'foo'" in msg and "s3" in msg and "gs" in msg and "abfs" in msg and "plain path" in msg

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if gcsfs were not installed
    for protocol in ("gs", "gcs"):  # and not imported before either
        monkeypatch.delitem(fsspec_registry, protocol, raising=False)
    with pytest.raises(UserError, match=r"pip install 'gridrun\[gcs\]'"):
        Storage.open("gs://b/x")

    for url in ["s3://AKIDEXAMPLE:hunter2-password@bucket/x", "s3://AKIDEXAMPLE@bucket/x"]:
        with pytest.raises(UserError) as err:
            Storage.open(url)
        msg = str(err.value)
        assert "hunter2" not in msg and "AKIDEXAMPLE" not in msg
        assert "s3://bucket/x" in msg and "AWS_ACCESS_KEY_ID" in msg
    with pytest.raises(UserError, match="not supported"):
        Storage.open("s3://bucket/x?sig=token")
    with pytest.raises(UserError, match="no bucket"):
        Storage.open("s3://")
    with pytest.raises(UserError):
        Storage.open("simplecache::s3://bucket/x")


def test_url_forms() -> None:
    mem = Storage.open("memory://gridrun-test/a/")
    assert mem.url == "memory://gridrun-test/a" and not mem.is_local and mem.local is None
    mem.write_json("x.json", {"a": 1})
    assert mem.read_json("x.json") == {"a": 1} and mem.listdir() == ["x.json"]
    mem.remove("")


def test_s3_check(s3: Storage, bucket: str, s3server: S3Server) -> None:
    s3.check()  # a prefix that does not exist yet is fine with create=True
    with pytest.raises(UserError, match="does not exist"):
        Storage.open(f"s3://{bucket}/nothing-here").check()
    missing = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    with pytest.raises(UserError) as err:
        Storage.open(f"s3://{missing}/results", create=True).check()
    assert f"'{missing}'" in str(err.value) and "does not exist" in str(err.value)
    s3.write_text("obj", "x")
    with pytest.raises(UserError, match="is an object"):
        s3.child("obj").check()


def test_s3_wrong_credentials(s3server_auth: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, s3server_auth)
    with pytest.raises(UserError) as err:
        Storage.open("s3://some-bucket/results", create=True).check()
    msg = str(err.value)
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg and "some-bucket" in msg
    assert SECRET not in msg and KEY_ID not in msg
    assert SECRET not in repr(err.value.__cause__) + repr(err.value.__context__)


def test_s3_no_credentials(s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, s3server)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="AWS_ACCESS_KEY_ID") as err:
        Storage.open("s3://some-bucket/results", create=True).check()
    assert "NoCredentialsError" in str(err.value)


def test_s3_endpoint_unreachable(s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    use_server(monkeypatch, s3server)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore retries a refused connection for seconds otherwise
    with pytest.raises(UserError, match=f"127.0.0.1:{port}") as err:
        Storage.open("s3://some-bucket/results", create=True).check()
    assert SECRET not in str(err.value)


def test_s3_endpoint_comes_from_the_environment(s3: Storage, bucket: str, s3server: S3Server) -> None:
    # Nothing but AWS_ENDPOINT_URL points the client at moto: the object is there through plain boto3 too.
    s3.write_text("probe.txt", "here")
    body = s3server.client().get_object(Bucket=bucket, Key=f"{AWKWARD}/probe.txt")["Body"].read()
    assert body == b"here"


def test_s3_other_writers_are_seen(s3: Storage) -> None:
    other = Storage.open(s3.url)  # another client, as another process would be
    s3.write_text("d/mine.txt", "m")
    assert s3.listdir() == ["d"] and s3.listdir("d") == ["mine.txt"]  # fills s3fs's listing cache
    assert s3.files() == {"d/mine.txt": 1} and not s3.exists("d/deep.txt") and not s3.exists("new.txt")
    other.write_text("new.txt", "n")
    other.write_text("d/deep.txt", "dd")
    assert s3.listdir() == ["d", "new.txt"] and s3.listdir("d") == ["deep.txt", "mine.txt"]
    assert s3.files() == {"d/deep.txt": 2, "d/mine.txt": 1, "new.txt": 1}
    assert s3.exists("d/deep.txt") and s3.exists("new.txt") and s3.isdir("d")
    other.remove("d")
    assert s3.listdir() == ["new.txt"] and not s3.exists("d/mine.txt") and not s3.isdir("d")


def test_s3_large_upload_appears_whole(s3: Storage, bucket: str, s3server: S3Server, tmp_path: Path) -> None:
    """A reader during a multipart upload sees the old object; the new one appears whole at completion."""
    s3.write_bytes("ckpt.pt", b"old")
    fifo = tmp_path / "source"
    os.mkfifo(fifo)  # the test feeds the upload at its own pace
    failures: list[BaseException] = []

    def upload() -> None:
        try:
            s3.upload(fifo, "ckpt.pt")
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    client = s3server.client()
    chunk = b"n" * MB
    with open(fifo, "wb") as feed:
        for _ in range(17):
            feed.write(chunk)
        feed.flush()
        wait_until(lambda: client.list_multipart_uploads(Bucket=bucket).get("Uploads"))
        assert s3.read_bytes("ckpt.pt") == b"old"
        for _ in range(4):
            feed.write(chunk)
    thread.join(30)
    assert not failures
    assert s3.read_bytes("ckpt.pt") == chunk * 21
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_s3_failed_upload_publishes_nothing(
    s3: Storage, bucket: str, s3server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.write_bytes("ckpt.pt", b"old")
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (20 * MB))
    real_copy = storage_module.shutil.copyfileobj

    def copy_then_fail(fsrc, fdst, length=0) -> None:
        fdst.write(fsrc.read(10 * MB))  # one part goes up
        raise OSError("network gone")

    monkeypatch.setattr(storage_module.shutil, "copyfileobj", copy_then_fail)
    with pytest.raises(OSError, match="network gone"):
        s3.upload(src, "ckpt.pt")
    monkeypatch.setattr(storage_module.shutil, "copyfileobj", real_copy)
    assert s3.read_bytes("ckpt.pt") == b"old"
    assert not s3server.client().list_multipart_uploads(Bucket=bucket).get("Uploads")  # aborted


# ---- Syncer ----


def test_syncer_mirrors_into_s3(s3: Storage, tmp_path: Path) -> None:
    work = tmp_path / "work dir"
    work.mkdir()
    dest = s3.child("job")
    syncer = Syncer(work, dest, interval=0.1, skip=("spec.json",))
    syncer.start()
    try:
        (work / "log.txt").write_text("epoch 1\n")
        wait_until(lambda: dest.read_text("log.txt") == "epoch 1\n")
        (work / "result.json").write_text('{"early": true}')
        (work / "spec.json").write_text("{}")
        (work / ".partial.tmp").write_text("temp")
        (work / "tb").mkdir()
        (work / "tb" / ".events.tmp").write_text("temp")
        (work / "tb" / "events.out").write_bytes(b"e1")
        (work / "checkpoints").mkdir()
        (work / "checkpoints" / "last.pt").write_bytes(b"ckpt")
        wait_until(lambda: dest.exists("checkpoints/last.pt") and dest.exists("tb/events.out"))
        with (work / "log.txt").open("a") as f:  # an append: the whole file goes again
            f.write("epoch 2\n")
        wait_until(lambda: dest.read_text("log.txt") == "epoch 1\nepoch 2\n")
        assert not dest.exists("result.json")  # several syncs ran since it was written
    finally:
        syncer.stop()
    assert syncer.error is None
    assert dest.read_json("result.json") == {"early": True}
    expected = {"log.txt", "result.json", "tb/events.out", "checkpoints/last.pt"}
    assert set(dest.files()) == expected
    for rel in expected:
        assert dest.read_bytes(rel) == (work / rel).read_bytes()
    assert syncer.sync_once() == 0  # nothing changed since


class Recorder:
    """A destination that records uploads in order and fails while `failing` is set."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.failing = False
        self.lock = threading.Lock()

    def upload(self, local_file: Path, rel: str) -> None:
        if self.failing:
            raise OSError("storage down")
        with self.lock:
            self.order.append(rel)

    def __str__(self) -> str:
        return "recorder"


def test_syncer_result_strictly_last_and_errors(tmp_path: Path) -> None:
    for name in ["result.json", "a.txt", "z.txt", "b/c.txt", "progress.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    dest = Recorder()
    syncer = Syncer(tmp_path, dest, interval=0.05, last=("progress.json", "result.json"))  # type: ignore[arg-type]
    dest.failing = True
    syncer.start()
    wait_until(lambda: isinstance(syncer.error, OSError))
    assert syncer._thread is not None and syncer._thread.is_alive()  # an error does not end the thread
    dest.failing = False
    wait_until(lambda: "a.txt" in dest.order)
    (tmp_path / "a.txt").write_text("changed, and longer")
    wait_until(lambda: dest.order.count("a.txt") == 2)
    syncer.stop()
    assert dest.order[-2:] == ["progress.json", "result.json"]
    assert sorted(dest.order[:-2]) == ["a.txt", "a.txt", "b/c.txt", "z.txt"]

    (tmp_path / "z.txt").write_text("again")
    (tmp_path / "result.json").write_text("final again")
    failing = Syncer(tmp_path, dest, interval=60)  # type: ignore[arg-type]
    failing.start()
    dest.failing = True
    with pytest.raises(OSError, match="storage down"):
        failing.stop()
    dest.failing = False
    failing.stop()  # a second final sync succeeds and clears the error
    assert failing.error is None and dest.order[-1] == "result.json"


def test_syncer_into_local_folder(local: Storage, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "best.pt").write_bytes(b"b" * 1000)
    (work / "result.json").write_text(json.dumps({"ok": 1}))
    syncer = Syncer(work, local.child("job"))
    assert syncer.sync_once() == 1000  # result.json waits for the final sync
    syncer.stop()
    assert local.child("job").files() == {"checkpoints/best.pt": 1000, "result.json": 9}
