"""Where results and caches live: a local folder, a mount, or any fsspec URL, behind one small API.

Modeled on Ray Train's StorageContext and Lightning's ``get_filesystem``: a filesystem plus a root path. This is the
only module that looks at a URL scheme. Credentials never pass through gridrun: each provider's library reads its own
standard variables and files (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE, ~/.aws).
"""

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import urlsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem

from runner.errors import UserError
from schemas.base import clip, excerpt

# Each filesystem library is an extra of its own (pyproject); the package is what a failed import names.
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "abfs": "azure", "abfss": "azure", "az": "azure"}
_PACKAGES = {"s3": "s3fs", "gcs": "gcsfs", "azure": "adlfs"}
# Where credentials come from, by extra: named in messages, never read or shown by gridrun.
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE "
    "with ~/.aws/credentials; for an S3-compatible service also AWS_ENDPOINT_URL",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (a service-account key file), or `gcloud auth application-default login`",
    "azure": "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
    "AZURE_STORAGE_SAS_TOKEN",
}
_MAKE_BUCKET = {
    "s3": "aws s3 mb s3://{b}",
    "gcs": "gcloud storage buckets create gs://{b}",
    "azure": "az storage container create -n {b}",
}
# Values that must never reach a message, even through a library's own error text.
_SECRET_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_CLIENT_SECRET",
)
# Error codes (S3, Azure) and exception names (botocore, google-auth) that mean: the credentials do not do.
_AUTH_CODES = {
    "403",
    "401",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationFailure",
    "AuthenticationFailed",
}
_AUTH_CLASSES = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "DefaultCredentialsError")
_LOCAL_SCHEMES = ("file", "local")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COPY_CHUNK = 1 << 20
# Above this an upload goes as parts (8 MiB, as the AWS CLI; S3's minimum is 5 MiB): memory stays near three blocks
# (the buffer, the part, the HTTP body) whatever the size.
_UPLOAD_BLOCK = 8 << 20


def _scrub(text: str) -> str:
    """Text without `user:pass@` in URLs and without the values of known secret variables."""
    text = re.sub(r"(//)[^/@\s]*:[^/@\s]*@", r"\1", text)
    for var in _SECRET_VARS:
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _check_rel(rel: str, *, empty_ok: bool = False) -> str:
    """A posix relative path that cannot leave the root, or ValueError."""
    if not isinstance(rel, str):
        raise ValueError(f"a storage path must be a str, not {type(rel).__name__}")
    if rel == "" and empty_ok:
        return rel
    if rel.startswith("/") or "\\" in rel or _CONTROL.search(rel):
        raise ValueError(f"invalid storage path {excerpt(rel)}: relative posix paths of plain names only")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"invalid storage path {excerpt(rel)}: empty, '.' and '..' parts are refused")
    return rel


def _check_name(part: str) -> str:
    """One plain name (a folder under a root), or ValueError."""
    if not isinstance(part, str) or "/" in part:
        raise ValueError(f"invalid name {excerpt(part)}: one plain name, without '/'")
    return _check_rel(part)


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _join(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}" if rel else base


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder itself is synced; some filesystems refuse, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Storage:
    """A filesystem plus a root: the results of a study, or a cache. Build one with `Storage.open`."""

    def __init__(
        self, *, fs: Any, root: str, url: str, protocol: str, local: Path | None, jail: Path | None, create: bool
    ) -> None:
        self.fs = fs
        self.root = root
        self.url = url
        self.protocol = protocol
        self.local = local
        self.create = create
        self._jail = jail  # the root given to open(): local writes never leave it, even from a child

    # ---- opening and checking ----

    @classmethod
    def open(cls, where: "str | os.PathLike[str] | Storage", *, create: bool = False) -> Self:
        """Parse a path or URL into a Storage; nothing is contacted (see `check`)."""
        if isinstance(where, Storage):
            return where  # type: ignore[return-value]
        if isinstance(where, os.PathLike):
            return cls._local(Path(where), create)
        text = str(where)
        if not text.strip():
            raise UserError("no storage location given. Fix: pass a folder path or a URL such as s3://bucket/prefix.")
        if "://" not in text:
            return cls._local(Path(text), create)
        match = _URL.match(text)
        parts = urlsplit(text)
        shown = cls._display(text)
        said = clip(shown, 120)  # as messages show it: a 10 kB argument is not repeated whole
        if not match:
            raise UserError(
                f"{said}: not a URL gridrun understands (chained URLs are not supported)."
                f" Fix: use scheme://bucket/prefix, or a plain path."
            )
        scheme = match.group(1).lower()
        extra = _EXTRAS.get(scheme)
        if parts.password is not None or (parts.username is not None and extra != "azure"):
            how = _CREDENTIALS.get(extra or "", "the provider's standard variables or files")
            raise UserError(
                f"{said}: the URL carries credentials."
                f" Fix: remove them from the URL and set them where the provider looks: {how}."
            )
        if parts.query or parts.fragment:
            # A query may carry a token (Azure SAS); nothing gridrun supports needs one.
            raise UserError(
                f"{said}: URLs with '?' or '#' are not supported."
                f" Fix: remove the query (tokens go in the provider's variables)."
            )
        if _CONTROL.search(text) or any(p in (".", "..") for p in parts.path.split("/")):
            raise UserError(
                f"{said}: '.' and '..' and control characters are not allowed in a storage URL."
                f" Fix: name the folder plainly."
            )
        if scheme in _LOCAL_SCHEMES:
            if parts.netloc not in ("", "localhost"):
                raise UserError(f"{said}: a file URL names no host. Fix: use file:///absolute/path or a plain path.")
            return cls._local(Path(parts.path or "/"), create)
        if scheme not in fsspec.available_protocols():
            known = set(_EXTRAS) | set(_LOCAL_SCHEMES) | {"adl"}
            others = ", ".join(p for p in sorted(fsspec.available_protocols()) if p not in known)
            raise UserError(
                f"{said}: unknown storage scheme {excerpt(scheme)}. Known: s3, gs, abfs/az, file (fsspec also knows: "
                f"{others}). Fix: use one of those, or a plain path for a local folder or a mount (NFS)."
            )
        try:
            fs_class = fsspec.get_filesystem_class(scheme)
        except ImportError as exc:
            if extra:
                raise UserError(
                    f"{said}: {scheme}:// needs the {extra} extra ({_PACKAGES[extra]})."
                    f" Fix: pip install 'gridrun[{extra}]'"
                ) from None
            raise UserError(
                f"{said}: {scheme}:// needs a library that is not installed ({_scrub(str(exc))}). Fix: install it."
            ) from None
        root = fs_class._strip_protocol(text).rstrip("/")
        if extra and not root.split("/")[0]:
            raise UserError(f"{said}: names no bucket. Fix: use {scheme}://bucket/prefix.")
        try:
            # A fresh instance: fsspec caches by arguments only, so a cached one would keep stale env credentials.
            fs = fs_class(**fs_class._get_kwargs_from_urls(text), skip_instance_cache=True)
        except Exception as exc:
            how = _CREDENTIALS.get(extra or "", "the provider's standard variables")
            raise UserError(f"{said}: cannot set up {scheme}:// ({_scrub(str(exc))}). Fix: check {how}.") from None
        return cls(fs=fs, root=root, url=shown, protocol=scheme, local=None, jail=None, create=create)

    @classmethod
    def _local(cls, path: Path, create: bool) -> Self:
        local = path.expanduser().resolve()
        fs = LocalFileSystem()
        return cls(fs=fs, root=str(local), url=str(local), protocol="file", local=local, jail=local, create=create)

    @staticmethod
    def _display(url: str) -> str:
        """The URL without credentials, query or fragment, for messages."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return _scrub(url.split("?")[0])
        netloc = parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
        if parts.username and _EXTRAS.get(parts.scheme) == "azure" and parts.password is None:
            netloc = parts.netloc  # abfs://container@account...: a container, not a credential
        return _scrub(f"{parts.scheme}://{netloc}{parts.path}".rstrip("/"))

    def check(self, writable: bool = True) -> None:
        """Raise a UserError (what, where, fix) unless this location can be used; leaves nothing behind (a local
        folder to create is probed with a temp file that has no name). `writable=False`: a folder that is
        only read (a cache filled beforehand) need not be writable, but must not be a file."""
        if self.local is not None:
            self._check_local(self.local, writable)
            return
        try:
            self._check_remote()
        except UserError:
            raise
        except Exception as exc:
            raise self._explain(exc) from None

    def _check_local(self, path: Path, writable: bool = True) -> None:
        if path.exists() and not path.is_dir():
            raise UserError(f"{path} is a file, not a folder. Fix: choose a folder, or move the file away.")
        if not self.create:
            if not path.is_dir():
                raise UserError(f"{path} does not exist. Fix: check the path (results are read from there).")
            if not os.access(path, os.R_OK | os.X_OK):
                raise UserError(f"{path} is not readable. Fix: correct its permissions or choose another folder.")
            return
        # The folder is created on first write, so find the nearest existing one that would hold it.
        existing = path
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"{existing} is a file, so {path} cannot be created. Fix: choose another folder.")
        if not writable:
            return
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(
                f"cannot write in {existing} (for {path}). Fix: correct its permissions or choose another folder."
            )
        # os.access answers from the mode bits: a read-only mount, a full quota or a root-squashing NFS tell
        # only when something is written.
        try:
            with tempfile.TemporaryFile(dir=existing, prefix=".gridrun-probe-"):
                pass
        except OSError as e:
            raise UserError(
                f"cannot write in {existing} (for {path}): {e.strerror or e}. "
                "Fix: correct its permissions, free space, or choose another folder."
            ) from None

    def _check_remote(self) -> None:
        self._fresh()
        bucket = self.root.split("/")[0] if self.protocol in _EXTRAS else None
        if bucket:
            try:
                self.fs.info(bucket)
            except FileNotFoundError:
                raise self._no_bucket(bucket) from None
            except PermissionError:
                # A policy may allow a prefix but not the bucket itself: a listing of the root tells.
                with contextlib.suppress(FileNotFoundError):
                    self.fs.ls(self.root, detail=False)
        if self.root != bucket:
            if self.fs.isfile(self.root):
                raise UserError(f"{self.url} is an object, not a folder. Fix: choose another prefix.")
            if not self.create and not self.fs.exists(self.root):
                raise UserError(f"{self.url} does not exist. Fix: check the URL (results are read from there).")

    def _no_bucket(self, bucket: str) -> UserError:
        extra = _EXTRAS.get(self.protocol, "")
        make = _MAKE_BUCKET.get(extra, "").format(b=bucket)
        return UserError(
            f"{self.url}: the bucket {bucket!r} does not exist (or is on another endpoint)."
            f" Fix: correct the name, or create it" + (f" (`{make}`)." if make else ".")
        )

    def _explain(self, exc: BaseException) -> UserError:
        """One message for a failed check, from the whole exception chain; no values of any secret."""
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and e not in chain:
            chain.append(e)
            e = e.__cause__ or e.__context__
        names = {type(x).__name__ for x in chain}
        responses = [r for x in chain if isinstance(r := getattr(x, "response", None), dict)]  # botocore's
        codes = {str(r.get("Error", {}).get("Code", "")) for r in responses} - {""}
        extra = _EXTRAS.get(self.protocol, "")
        bucket = self.root.split("/")[0]
        if "NoSuchBucket" in codes:
            return self._no_bucket(bucket)
        if codes & _AUTH_CODES or names & set(_AUTH_CLASSES) or any(isinstance(x, PermissionError) for x in chain):
            why = ", ".join(sorted(codes & _AUTH_CODES) or sorted(names & set(_AUTH_CLASSES)) or ["access denied"])
            how = _CREDENTIALS.get(extra, "the provider's standard variables")
            return UserError(
                f"{self.url}: access refused ({why}): the credentials are missing, wrong, or lack permission on "
                f"{bucket!r}. Fix: set {how} (values are never shown here)."
            )
        for x in chain:
            if "Connect" in type(x).__name__ or isinstance(x, ConnectionError | TimeoutError):
                return UserError(
                    f"{self.url}: cannot reach the endpoint {self._endpoint_host(x)}. Fix: check the network, and "
                    "AWS_ENDPOINT_URL (or the provider's endpoint setting) if the service is not the default one."
                )
        return UserError(
            f"{self.url}: cannot be used ({type(exc).__name__}: {_scrub(str(exc))})."
            f" Fix: check the URL and the credentials."
        )

    @staticmethod
    def _endpoint_host(exc: BaseException) -> str:
        url = (getattr(exc, "kwargs", None) or {}).get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL", "")
        host = getattr(exc, "host", None) or urlsplit(str(url)).netloc.rpartition("@")[2]
        return host or "(the provider's default)"

    # ---- naming ----

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def jail(self) -> Path | None:
        """The local root given to open(), which no write leaves; None on object storage."""
        return self._jail

    def child(self, *parts: str) -> "Storage":
        """A Storage rooted deeper, by plain names."""
        rel = "/".join(_check_name(p) for p in parts)
        local = self.local / rel if self.local is not None else None
        return Storage(
            fs=self.fs,
            root=_join(self.root, rel),
            url=_join(self.url, rel),
            protocol=self.protocol,
            local=local,
            jail=self._jail,
            create=self.create,
        )

    def parent(self) -> "Storage":
        """The folder holding the root, for reading (a suite's lock seen from one of its jobs). Writes stay
        confined to the root this Storage was opened on."""
        local = self.local.parent if self.local is not None else None
        root = self.root.rstrip("/").rpartition("/")[0] or self.root
        url = self.url.rstrip("/").rpartition("/")[0] or self.url
        return Storage(
            fs=self.fs, root=root, url=url, protocol=self.protocol, local=local, jail=self._jail, create=False
        )

    @property
    def key(self) -> str:
        """One string per place: the same folder reached twice gives the same key."""
        return str(self.local.resolve()) if self.local is not None else f"{self.protocol}://{self.root}"

    @property
    def name(self) -> str:
        """The root's own name (a suite's or a job's folder name)."""
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent_name(self) -> str:
        """The name of the folder that holds the root."""
        parts = self.root.rstrip("/").rsplit("/", 2)
        return parts[-2] if len(parts) > 1 else ""

    def path_url(self, rel: str = "") -> str:
        """The display URL of `rel` (credential-free), for messages and links."""
        return _join(self.url, _check_rel(rel, empty_ok=True))

    def path(self, rel: str = "") -> str:
        """The full path of `rel` in `fs`."""
        return _join(self.root, _check_rel(rel, empty_ok=True))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def _fresh(self) -> None:
        # s3fs (and others) cache listings; another writer's objects are only seen after this.
        if self.local is None:
            self.fs.invalidate_cache()

    def _target(self, rel: str) -> Path:
        """The local path to change for `rel`, refused when a symbolic link would lead it outside the root."""
        assert self.local is not None and self._jail is not None
        target = self.local / _check_rel(rel)
        jail = self._jail.resolve()
        near = target.parent
        while near != jail and not os.path.lexists(near) and near != near.parent:
            near = near.parent
        resolved = near.resolve()
        if resolved != jail and jail not in resolved.parents:
            raise ValueError(f"{rel!r} leads outside {self._jail} through a symbolic link: refused")
        return target

    # ---- reading ----

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when missing."""
        try:
            if self.local is not None:
                return (self.local / _check_rel(rel)).read_bytes()
            return self.fs.cat_file(self.path(_check_rel(rel)))
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def read_text(self, rel: str) -> str | None:
        """The object as text, or None when missing; a log caught mid-character decodes with a replacement."""
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def read_json(self, rel: str) -> Any | None:
        """The parsed object, or None when missing or not valid JSON."""
        data = self.read_bytes(rel)
        try:
            return None if data is None else json.loads(data)
        except ValueError:
            return None

    def modified(self, rel: str) -> datetime | None:
        """When the object was last written (UTC), or None when missing."""
        try:
            if self.local is not None:
                return datetime.fromtimestamp((self.local / _check_rel(rel)).stat().st_mtime, UTC)
            info = self.fs.info(self.path(_check_rel(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return None
        stamp = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
        if isinstance(stamp, datetime):
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        if isinstance(stamp, int | float):
            return datetime.fromtimestamp(stamp, UTC)
        return None

    def exists(self, rel: str = "") -> bool:
        if self.local is not None:
            return os.path.lexists(self.local / _check_rel(rel, empty_ok=True))
        self._fresh()
        return self.fs.exists(self.path(rel))

    def isdir(self, rel: str = "") -> bool:
        if self.local is not None:
            return (self.local / _check_rel(rel, empty_ok=True)).is_dir()
        self._fresh()
        return self.fs.isdir(self.path(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names of the direct children, sorted; [] when missing."""
        if self.local is not None:
            try:
                names = os.listdir(self.local / _check_rel(rel, empty_ok=True))
            except (FileNotFoundError, NotADirectoryError):
                return []
        else:
            self._fresh()
            base = self.path(rel).rstrip("/")
            try:
                entries = self.fs.ls(base, detail=False)
            except (FileNotFoundError, NotADirectoryError):
                return []
            names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base]
        return sorted(n for n in set(names) if not _is_temp(n))

    def files(self, rel: str = "") -> dict[str, int]:
        """Every file under `rel`, recursively: relative posix path -> size; {} when missing."""
        out: dict[str, int] = {}
        if self.local is not None:
            base = self.local / _check_rel(rel, empty_ok=True)
            for folder, _dirs, names in os.walk(base):
                for name in names:
                    if _is_temp(name):
                        continue
                    full = Path(folder, name)
                    with contextlib.suppress(OSError):  # gone meanwhile, or a broken link
                        out[full.relative_to(base).as_posix()] = full.stat().st_size
            return dict(sorted(out.items()))
        self._fresh()
        base = self.path(rel).rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        for name, info in found.items():
            if info.get("type") == "file" and name.startswith(base + "/") and not _is_temp(name.rsplit("/", 1)[-1]):
                out[name[len(base) + 1 :]] = int(info.get("size") or 0)
        return dict(sorted(out.items()))

    # ---- writing: every object appears whole or not at all ----

    def _write_local(self, rel: str, fill: Callable[[IO[bytes]], None]) -> None:
        target = self._target(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target(rel)  # again: a link may have appeared while the folders were made
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "xb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(target.parent)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: temp + fsync + rename locally, one PUT on object storage."""
        if self.local is not None:
            self._write_local(rel, lambda f: f.write(data))
        else:
            self.fs.pipe_file(self.path(_check_rel(rel)), bytes(data))

    def create_bytes(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if it does not exist yet: True when this call created it, False when it was there.

        Locally the temp file is linked into place (link fails on an existing name); on S3 one conditional PUT
        (If-None-Match). A store whose filesystem has no conditional write checks then writes (not atomic)."""
        if self.local is not None:
            target = self._target(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
            try:
                with open(tmp, "xb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            _fsync_dir(target.parent)
            return True
        path = self.path(_check_rel(rel))
        self._fresh()
        try:
            self.fs.pipe_file(path, bytes(data), mode="create")
        except FileExistsError:
            return False
        except TypeError:  # this filesystem has no exclusive create
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, bytes(data))
        except OSError as e:  # S3 answers 412 Precondition Failed for an existing key
            if "412" in str(e) or "PreconditionFailed" in str(e):
                return False
            raise
        return True

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> None:
        """Write a pydantic model or any JSON-able object (others as str), indented."""
        if hasattr(obj, "model_dump_json"):
            text = obj.model_dump_json(indent=2)
        else:
            text = json.dumps(obj, indent=2, default=str)
        self.write_text(rel, text + "\n")

    def upload(self, local_file: Path, rel: str) -> None:
        """Copy a local file in, streamed from one open descriptor, so a rename of the source cannot mix versions."""
        with open(local_file, "rb") as src:
            if self.local is not None:
                self._write_local(rel, lambda f: shutil.copyfileobj(src, f, _COPY_CHUNK))
                return
            path = self.path(_check_rel(rel))
            st = os.fstat(src.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size <= _UPLOAD_BLOCK:
                self.fs.pipe_file(path, src.read())  # small: one PUT
                return
            # Large: parts, published only by commit (S3: CompleteMultipartUpload); autocommit=False keeps a
            # failure from publishing a truncated object on close.
            dst = self.fs.open(path, "wb", block_size=_UPLOAD_BLOCK, autocommit=False)
            try:
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
                dst.close()
                dst.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    dst.discard()
                dst.closed = True  # so that garbage collection does not flush (and publish) what is left
                raise

    def download(self, rel: str, local_file: Path) -> None:
        """Copy an object out, to a temp file renamed into place."""
        local_file = Path(local_file)
        local_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_file.parent / f".{local_file.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if self.local is not None:
                shutil.copyfile(self.local / _check_rel(rel), tmp)
            else:
                self.fs.get_file(self.path(_check_rel(rel)), str(tmp))
            os.replace(tmp, local_file)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def download_tree(self, rel: str, local_dir: Path, skip: Collection[str] = ()) -> int:
        """Copy every file under `rel` into `local_dir` (top-level names in `skip` left out); returns the count."""
        count = 0
        for name in self.files(rel):
            _check_rel(name)  # a key such as 'a/../../x' must not write outside local_dir
            if name.split("/")[0] in skip:
                continue
            self.download(f"{rel}/{name}" if rel else name, Path(local_dir, *name.split("/")))
            count += 1
        return count

    def remove(self, rel: str) -> None:
        """Remove a file or a folder, recursively ('' is the root itself); missing is fine."""
        if self.local is not None:
            target = self._target(rel) if rel else self.local
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            return
        # The objects themselves (in bulk requests), not `rm(recursive=True)`: on a bucket root s3fs deletes the bucket.
        base = self.path(rel)
        paths = [_join(base, name) for name in self.files(rel)]
        if rel and self.fs.isfile(base):
            paths.append(base)
        if paths:
            self.fs.rm(paths)
        self._fresh()

    def move(self, rel_from: str, rel_to: str) -> None:
        """Move a file (replacing one) or a folder (to a place that must not exist)."""
        if self.local is not None:
            src, dst = self._target(rel_from), self._target(rel_to)
            if not os.path.lexists(src):
                raise FileNotFoundError(f"{self.url}/{rel_from}")
            if src.is_dir() and os.path.lexists(dst):
                raise FileExistsError(f"{self.url}/{rel_to}")
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            return
        src_path, dst_path = self.path(_check_rel(rel_from)), self.path(_check_rel(rel_to))
        self._fresh()
        if self.fs.isfile(src_path):
            self.fs.copy(src_path, dst_path)
        else:
            names = self.files(rel_from)
            if not names:
                raise FileNotFoundError(f"{self.url}/{rel_from}")
            if self.files(rel_to):
                raise FileExistsError(f"{self.url}/{rel_to}")
            for name in names:  # one by one: fsspec's recursive copy nests differently when the target exists
                self.fs.copy(_join(src_path, name), _join(dst_path, name))
        self.remove(rel_from)
