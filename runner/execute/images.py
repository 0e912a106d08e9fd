"""The framework images: their tags, building them, listing them, and the Docker client.

A tag is `gridrun-<framework>:<project version>-<hash of the Dockerfile>`, so a changed
Dockerfile is a new tag. The project code inside an image is tracked by a label holding the
hash of every file the build sends (`gridrun.source-hash`); an image built from other code is
stale and `probe` says so.
"""

import hashlib
import io
import os
import re
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import __version__
from runner.errors import UserError
from schemas import registry

if TYPE_CHECKING:
    import docker

FRAMEWORKS = tuple(registry.FRAMEWORKS)
ROOT = Path(__file__).resolve().parents[2]  # the source checkout: docker/, runner/, schemas/
OFFLINE_BASE = "gridrun-python:bookworm"  # what docker/base/build.sh makes
PIP_CA = "docker/pip-ca/ca.crt"  # where a proxy CA travels in the build context (builder stage only)
# What the Dockerfiles copy; the same list as .dockerignore.
CONTEXT_FILES = ("pyproject.toml", "README.md")
CONTEXT_DIRS = ("runner", "schemas", "docker/pip-ca")
LABEL_FRAMEWORK = "gridrun.framework"
LABEL_SOURCE = "gridrun.source-hash"
LABEL_BASE = "gridrun.base-image"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_PACKAGE = "gridrun.version."  # gridrun.version.<package>=<version>: a version an image declares it holds


def docker_host() -> str:
    """The daemon address the Docker SDK uses."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def daemon_problem(exc: Exception) -> str:
    """Why the daemon did not answer, in words."""
    text = str(exc)
    if "Permission denied" in text or isinstance(exc, PermissionError):
        return f"permission denied on the Docker daemon at {docker_host()} (add yourself to the docker group)"
    return f"no Docker daemon at {docker_host()}"


def try_connect(timeout: float = 60) -> tuple["docker.DockerClient | None", str]:
    """(client, "") when a daemon answers, else (None, why in words)."""
    try:
        import docker
    except ImportError:
        return None, "the Docker SDK for Python is not installed (pip install -e '.[host]')"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as e:  # the SDK wraps connection errors in several types
        return None, daemon_problem(e)
    return client, ""


def connect(timeout: float = 60) -> "docker.DockerClient":
    """A client of a daemon that answers, or a UserError that says how to start one."""
    client, why = try_connect(timeout)
    if client is None:
        raise UserError(
            f"{why}. Fix: start it (`sudo systemctl start docker`, or `sudo bash docker/ci-setup.sh` on Debian), "
            "or use --executor process"
        )
    return client


def dockerfile(framework: str) -> Path:
    """docker/<framework>.Dockerfile in the source checkout."""
    if framework not in FRAMEWORKS:
        raise UserError(f"unknown framework {framework!r}: use one of {', '.join(FRAMEWORKS)}")
    path = ROOT / registry.FRAMEWORKS[framework].dockerfile
    if not path.is_file():
        raise UserError(f"{path} is missing: gridrun's images are built from a source checkout of gridrun")
    return path


def _context_files(framework: str) -> list[tuple[str, Path]]:
    """(name in the build context, file) for everything a build sends, sorted; the CA is not among them."""
    files = [(registry.FRAMEWORKS[framework].dockerfile, dockerfile(framework))]
    files += [(name, ROOT / name) for name in CONTEXT_FILES]
    for folder in CONTEXT_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".crt", ".pem"):
                files.append((rel, path))
    return sorted(files)


def dockerfile_hash(framework: str) -> str:
    return hashlib.sha256(dockerfile(framework).read_bytes()).hexdigest()[:12]


def source_hash(framework: str) -> str:
    """Hash of the Dockerfile and of every file the image copies: its identity as built from this tree."""
    h = hashlib.sha256()
    for name, path in _context_files(framework):
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def tag(framework: str) -> str:
    """gridrun-<framework>:<version>-<Dockerfile hash>, e.g. gridrun-torch:0.1.0-3f2a9c01b7de."""
    return f"{registry.FRAMEWORKS[framework].image}:{__version__}-{dockerfile_hash(framework)}"


def digest(image: Any) -> str:
    """A registry digest when the image came from one, else its content-addressed id (sha256:...)."""
    repo_digests = image.attrs.get("RepoDigests") or []
    return repo_digests[0] if repo_digests else image.id


def identity(name: str) -> tuple[str, dict[str, str]]:
    """(digest, package versions its labels declare) of the image `name` on this machine; ('', {}) when no
    daemon answers or it is not here (yet: a plan before the build)."""
    client, _ = try_connect(timeout=5)
    image = local_image(client, name) if client is not None else None
    if image is None:
        return "", {}
    labels = image.labels or {}
    versions = {k.removeprefix(LABEL_PACKAGE): v for k, v in labels.items() if k.startswith(LABEL_PACKAGE)}
    return digest(image), versions


def default_base(framework: str) -> str:
    """The BASE_IMAGE default written in the Dockerfile."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile(framework).read_text(), re.M)
    return match.group(1) if match else ""


def _pip_config(env: str, key: str) -> str:
    """A pip setting: its environment variable, else `pip config get`."""
    value = os.environ.get(env, "")
    if not value:
        try:
            out = subprocess.run(
                [sys.executable, "-m", "pip", "config", "get", key],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            value = out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            value = ""
    return value


def pip_cert() -> Path | None:
    """The CA bundle pip uses on this machine: $PIP_CERT, else pip's configured `cert`."""
    value = _pip_config("PIP_CERT", "global.cert")
    return Path(value) if value and Path(value).is_file() else None


def index_problem(timeout: float = 5) -> str:
    """'' when pip's package index answers, else why not. A build that needs it would otherwise wait out
    pip's timeouts and retries for many minutes on a machine without network."""
    url = _pip_config("PIP_INDEX_URL", "global.index-url") or "https://pypi.org/simple/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except urllib.error.HTTPError as e:
        if e.code in (502, 503, 504):  # a proxy that could not reach it
            return f"the package index {url} does not answer (HTTP {e.code} from a proxy)"
        return ""  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLError):
            return ""  # it answered; the build is given pip's CA (--pip-cert)
        return f"the package index {url} does not answer ({reason})"


def local_image(client: Any, name: str) -> Any | None:
    """The image `name` (a tag or an id) on this machine, or None."""
    import docker

    try:
        return client.images.get(name)
    except docker.errors.ImageNotFound:
        return None


def _has_image(client: Any, name: str) -> bool:
    return local_image(client, name) is not None


def choose_base(client: Any, framework: str, base_image: str | None, say: Callable[[str], None]) -> str:
    """The base image to build on: the one asked for, else the Dockerfile's default when it is here,
    else the offline base from docker/base/build.sh when that is here, else the default (pulled)."""
    if base_image:
        # An offline base cannot be pulled: say how to make it rather than let the build fail on a pull.
        if base_image.startswith("gridrun-") and not _has_image(client, base_image):
            raise UserError(
                f"base image {base_image} is not on this machine. "
                f"Fix: build it with `sudo bash docker/base/build.sh --tag {base_image}`"
            )
        return base_image
    default = default_base(framework)
    if not _has_image(client, default) and _has_image(client, OFFLINE_BASE):
        say(f"base image: {OFFLINE_BASE} (the offline one; {default} is not on this machine)")
        return OFFLINE_BASE
    return default


def _context(framework: str, ca: Path | None) -> io.BytesIO:
    """The build context as a tar stream, with fixed owners and modes so that layer caching is stable."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = [(name, path.read_bytes()) for name, path in _context_files(framework)]
        if ca is not None:
            entries.append((PIP_CA, ca.read_bytes()))
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@dataclass(frozen=True)
class Built:
    """One image build: its tag, id, size and how long it took."""

    tag: str
    id: str
    size_bytes: int
    seconds: float
    base_image: str


def build(
    framework: str,
    base_image: str | None = None,
    ca: Path | None = None,
    no_cache: bool = False,
    say: Callable[[str], None] = print,
    client: Any = None,
) -> Built:
    """Build the framework's image with the classic builder; the CA, if any, reaches only the builder stage."""
    client = client or connect(timeout=3600)
    name = tag(framework)
    base = choose_base(client, framework, base_image, say)
    if ca is not None and not ca.is_file():
        raise UserError(f"CA bundle {ca} does not exist. Fix: name the file pip should trust, or leave it out")
    say(f"building {name} on {base}" + (f" (pip trusts {ca} during the build)" if ca else ""))
    previous = getattr(local_image(client, name), "id", None)
    start = time.perf_counter()
    stream = client.api.build(
        fileobj=_context(framework, ca),
        custom_context=True,
        dockerfile=f"docker/{framework}.Dockerfile",
        tag=name,
        buildargs={"BASE_IMAGE": base, "GRIDRUN_VERSION": __version__},
        labels={LABEL_SOURCE: source_hash(framework), LABEL_BASE: base},
        rm=True,
        forcerm=True,
        nocache=no_cache,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise UserError(
                f"building {name} failed: {chunk['error'].strip()}. Fix: see the build output above "
                "(no network to the package index? a proxy CA: --pip-cert FILE)"
            )
        text = chunk.get("stream", "").rstrip()
        if text:
            say(text)
    seconds = time.perf_counter() - start
    image = client.images.get(name)
    if previous and previous != image.id:
        _remove_untagged(client, previous, say)
    return Built(name, image.id, int(image.attrs.get("Size", 0)), seconds, base)


def _remove_untagged(client: Any, image_id: str, say: Callable[[str], None]) -> None:
    """Remove the image a rebuild took the tag from, so rebuilds do not pile up gigabytes of
    untagged images; kept when it still has another tag or a container uses it."""
    import docker

    try:
        if client.images.get(image_id).tags:
            return
        client.images.remove(image_id)
        say(f"removed the previous build {image_id[:19]}")
    except docker.errors.APIError as e:
        say(f"kept the previous build {image_id[:19]}: {e.explanation or e}")


@dataclass(frozen=True)
class Listed:
    """One gridrun image on this machine."""

    tag: str
    framework: str
    version: str
    digest: str
    size_bytes: int
    created: str
    state: str  # current, stale (other code), old (other Dockerfile or version)


def state_of(image: Any, name: str) -> str:
    """current / stale / old, relative to this source tree."""
    framework = image.labels.get(LABEL_FRAMEWORK, "")
    if framework not in FRAMEWORKS or name != tag(framework):
        return "old"
    return "current" if image.labels.get(LABEL_SOURCE) == source_hash(framework) else "stale"


def prune(client: Any = None, say: Callable[[str], None] = print) -> list[Listed]:
    """Remove the tags of gridrun images built from another Dockerfile or version ("old"); an image goes
    with its last tag. The current tags stay, out of date or not (a run rebuilds those). What went."""
    import docker

    client = client or connect()
    removed = []
    for listed in list_images(client):
        if listed.state != "old":
            continue
        try:
            client.images.remove(listed.tag)
            removed.append(listed)
        except docker.errors.APIError as e:  # a container still uses it
            say(f"kept {listed.tag}: {e.explanation or e}")
    return removed


def list_images(client: Any = None) -> list[Listed]:
    """Every tagged gridrun framework image on this machine, newest first."""
    client = client or connect()
    rows = []
    for image in client.images.list(filters={"label": LABEL_FRAMEWORK}):
        for name in image.tags:
            rows.append(
                Listed(
                    tag=name,
                    framework=image.labels.get(LABEL_FRAMEWORK, ""),
                    version=image.labels.get(LABEL_VERSION, ""),
                    digest=digest(image),
                    size_bytes=int(image.attrs.get("Size", 0)),
                    created=image.attrs.get("Created", "")[:19].replace("T", " "),
                    state=state_of(image, name),
                )
            )
    return sorted(rows, key=lambda r: r.created, reverse=True)
