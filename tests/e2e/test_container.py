"""The container image from deploy/Dockerfile, built and run with podman as a user would with
docker: it serves and streams, runs as non-root, reports healthy on the port and scheme it is
configured with, stops cleanly on SIGTERM, keeps its SQLite database on its /data volume, and
runs as a cluster of two instances on the machine's PostgreSQL and Redis.

No image registry is reachable here, so the base is Debian bookworm made with mmdebstrap from
Debian's packages (python3, python3-venv, ca-certificates) and handed to the Dockerfile as
BASE_IMAGE. The base is kept in podman's store under a tag naming a hash of what it is made
of, and the ratewire image under a hash of its build context: a rerun on the same sources
builds nothing. podman, runc and mmdebstrap are installed from Debian when missing. Without
them, or where podman cannot run containers, these tests skip with the reason, and fail with
CI=true."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import resource
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.conftest import REDIS_TEST_URL
from tests.e2e.wsclient import WsClient
from tests.support.certs import self_signed
from tests.support.debian import ensure_tool
from tests.support.server import SECRET, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.container]

ROOT = Path(__file__).resolve().parents[2]
#: Outside the work tree: kept across runs (and clones), like podman's own store.
CACHE = Path("/var/tmp/ratewire-container-tests")

#: What the base image is made of; its hash names the image, so a change here makes a new one.
BASE_RECIPE = [
    "--variant=minbase",
    "--include=python3,python3-venv,ca-certificates",
    # merged /usr without the usrmerge package (which pulls in perl), no recommends, no docs.
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--aptopt=APT::Install-Recommends false",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "bookworm",
]
BASE_REPOSITORY = "localhost/ratewire-test-base"
IMAGE_REPOSITORY = "localhost/ratewire-test"
#: What deploy/Dockerfile copies (as .dockerignore lets in), and the files that say how.
CONTEXT_FILES = ["pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"]
RECIPE_FILES = ["deploy/Dockerfile", ".dockerignore"]
#: The host's CA bundle, which pip in the build needs to reach PyPI from here.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the container tests must run)")
    pytest.skip(reason)


def _limits() -> list[str]:
    """--ulimit options within this host's hard limits (podman's defaults exceed them here)."""
    options = []
    for name, limit, wanted in (
        ("nofile", resource.RLIMIT_NOFILE, 65536),
        ("nproc", resource.RLIMIT_NPROC, 4096),
    ):
        hard = resource.getrlimit(limit)[1]
        value = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        options += ["--ulimit", f"{name}={value}:{value}"]
    return options


@dataclass
class Podman:
    """podman with the options this machine needs (runc; host networking; limits)."""

    executable: str
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.executable, "--runtime", "runc", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} failed: {done.stderr[-3000:]}")
        return done

    def run(self, image: str, *args: str, env: dict[str, str], mounts: list[str]) -> str:
        """Start a detached container on the host's network; its name."""
        name = f"ratewire-test-{secrets.token_hex(4)}"
        self.containers.append(name)
        options = [f"--env={key}={value}" for key, value in env.items()]
        options += [f"--volume={mount}" for mount in mounts]
        self(
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            *_limits(),
            *options,
            image,
            *args,
        )
        return name

    def volume(self) -> str:
        name = f"ratewire-test-{secrets.token_hex(4)}"
        self("volume", "create", name)
        self.volumes.append(name)
        return name

    def logs(self, name: str) -> str:
        done = self("logs", name, check=False)
        return (done.stdout + done.stderr)[-3000:]

    def exit_code(self, name: str) -> int:
        return int(self("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())

    def clean(self) -> None:
        for name in self.containers:
            self("rm", "--force", "--volumes", "--time", "0", name, check=False)
        for name in self.volumes:
            self("volume", "rm", "--force", name, check=False)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One build at a time on this machine (several pytest runs may share it)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _drop_other_tags(podman: Podman, repository: str, keep: str) -> None:
    """Earlier builds' images (each some hundred MB), once an hour old: a test run beside this
    one (another checkout on this machine) may still be using a newer one."""
    listed = podman(
        "images",
        "--filter=until=1h",
        f"--filter=reference={repository}",
        "--format={{.Repository}}:{{.Tag}}",
        check=False,
    )
    for image in listed.stdout.split():
        if image.startswith(repository + ":") and image != keep:
            podman("rmi", image, check=False)  # refused while a container uses it


def _base_image(podman: Podman) -> str:
    """Debian bookworm with python3 and venv, made with mmdebstrap once per recipe."""
    mmdebstrap = ensure_tool("mmdebstrap", "mmdebstrap")
    tag = hashlib.sha256(json.dumps(BASE_RECIPE).encode()).hexdigest()[:16]
    image = f"{BASE_REPOSITORY}:{tag}"
    if podman("image", "exists", image, check=False).returncode == 0:
        return image
    tarball = CACHE / f"base-{tag}.tar"
    made = subprocess.run(
        [mmdebstrap, "--quiet", *BASE_RECIPE, str(tarball)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if made.returncode != 0:
        tarball.unlink(missing_ok=True)
        _unavailable(f"mmdebstrap could not make a Debian base: {made.stderr[-1500:]}")
    try:
        podman("import", "--change", 'CMD ["python3"]', str(tarball), image)
    finally:
        tarball.unlink(missing_ok=True)
    _drop_other_tags(podman, BASE_REPOSITORY, image)
    return image


def _context_hash(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    files = [ROOT / name for name in CONTEXT_FILES + RECIPE_FILES]
    files += sorted(
        path
        for path in (ROOT / "src").rglob("*")
        if path.is_file()
        and "__pycache__" not in path.parts
        and not any(part.endswith(".egg-info") for part in path.parts)
        and path.suffix != ".pyc"
    )
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _build(podman: Podman, base: str) -> str:
    """The ratewire image of the current sources, built unless one of them is in the store."""
    base_id = podman("image", "inspect", "--format", "{{.Id}}", base).stdout.strip()
    image = f"{IMAGE_REPOSITORY}:{_context_hash(base_id)}"
    if podman("image", "exists", image, check=False).returncode == 0:
        return image
    mounts = []
    if HOST_CA.exists():
        pip_conf = CACHE / "pip.conf"
        pip_conf.write_text("[global]\ncert = /etc/pip-host-ca.crt\n")
        mounts = [
            f"--volume={pip_conf}:/etc/pip.conf:ro",
            f"--volume={HOST_CA}:/etc/pip-host-ca.crt:ro",
        ]
    podman(
        "build",
        # docker format keeps HEALTHCHECK (OCI images have no field for it).
        "--format=docker",
        "--network=host",
        # No intermediate images left behind: the tag above is the cache.
        "--layers=false",
        *_limits(),
        *mounts,
        f"--build-arg=BASE_IMAGE={base}",
        "--file",
        str(ROOT / "deploy" / "Dockerfile"),
        "--tag",
        image,
        str(ROOT),
        timeout=900,
    )
    _drop_other_tags(podman, IMAGE_REPOSITORY, image)
    return image


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    try:
        executable = ensure_tool("podman", "podman")
        ensure_tool("runc", "runc")
        ensure_tool("mmdebstrap", "mmdebstrap")
    except RuntimeError as exc:
        _unavailable(str(exc))
    runner = Podman(executable)
    yield runner
    runner.clean()


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    with _locked():
        base = _base_image(podman)
        tried = podman("run", "--rm", "--network", "host", *_limits(), base, "true", check=False)
        if tried.returncode != 0:
            _unavailable(f"podman cannot run a container here: {tried.stderr[-1500:]}")
        return _build(podman, base)


@dataclass
class Container:
    """One running ratewire container on the host's network, on ports of its own."""

    podman: Podman
    name: str
    http_port: int
    ws_port: int
    scheme: str = "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    def token(self, sub: str, scope: str | None = None) -> str:
        """A token minted as an operator would: ``ratewire token`` inside the container."""
        command = ["exec", self.name, "ratewire", "token", sub]
        return self.podman(*command, *(["--scope", scope] if scope else [])).stdout.strip()

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        return self.podman("healthcheck", "run", self.name, check=False)


def _start(
    podman: Podman,
    image: str,
    *args: str,
    env: dict[str, str] | None = None,
    mounts: Sequence[str] = (),
    verify: ssl.SSLContext | bool = True,
    config_dir: Path | None = None,
) -> Container:
    """A container on ports of its own: given in the environment, or in a config.yml written
    to ``config_dir`` and passed as ``--config``."""
    http_port, ws_port = free_port(), free_port()
    tls = "RATEWIRE_TLS__CERT" in (env or {})
    ports = {"server": {"port": http_port}, "modules": {"websocket": {"port": ws_port}}}
    settings = {"RATEWIRE_JWT__SECRET": SECRET}
    if config_dir is None:
        settings["RATEWIRE_SERVER__PORT"] = str(http_port)
        settings["RATEWIRE_MODULES__WEBSOCKET__PORT"] = str(ws_port)
    else:
        (config_dir / "config.yml").write_text(json.dumps(ports))  # JSON is YAML
        for path in (config_dir, config_dir / "config.yml"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's user
        mounts = [*mounts, f"{config_dir}:/etc/ratewire:ro"]
        args = (*args, "--config", "/etc/ratewire/config.yml")
    name = podman.run(image, *args, env={**settings, **(env or {})}, mounts=list(mounts))
    container = Container(podman, name, http_port, ws_port, "https" if tls else "http")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state in ("exited", "stopped"):
            raise AssertionError(f"the container exited at start:\n{podman.logs(name)}")
        try:
            if httpx.get(f"{container.base_url}/healthz", verify=verify, timeout=1).is_success:
                return container
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the container did not answer /healthz:\n{podman.logs(name)}")


def _size_mb(podman: Podman, image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def test_the_image_is_small_and_runs_as_a_non_root_user(podman: Podman, image: str) -> None:
    size = _size_mb(podman, image)
    # Debian's minimal base with Python is ~130 MB, python:3.11-slim about the same; ratewire's
    # venv (with the PostgreSQL, MariaDB, Redis and NATS drivers) adds ~170 MB.
    assert size < 350, f"{image} is {size:.0f} MB"
    container = _start(podman, image)
    status = podman("exec", container.name, "cat", "/proc/1/status").stdout
    uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    assert uid is not None and uid.group(1) != "0", status
    # The server's own files: the database on the volume, owned by that user.
    listing = podman("exec", container.name, "ls", "-ln", "/data").stdout
    assert "ratewire.db" in listing and f" {uid.group(1)} " in listing, listing


async def test_serves_streams_stops_cleanly_and_keeps_ratings_on_its_volume(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    data = podman.volume()
    first = _start(podman, image, mounts=[f"{data}:/data"])
    async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    # The healthcheck follows RATEWIRE_SERVER__PORT (not the image's 8080).
    assert first.http_port != 8080
    assert first.healthcheck().returncode == 0, podman.logs(first.name)

    token = first.token("alice")
    subscriber = await WsClient.open(f"ws://127.0.0.1:{first.ws_port}/", token)
    await subscriber.recv()
    await subscriber.subscribe("rating.game.container")
    async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as http:
        written = await http.post(
            "/ratings",
            json={"gameId": "container", "userId": "alice", "score": 4},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert written.status_code == 201, written.text
    rating = written.json()
    [update] = await subscriber.updates(1, within=10)
    assert update["data"]["id"] == rating["id"] and update["data"]["score"] == 4

    # podman stop: SIGTERM, then SIGKILL after 10 s (exit 137). Exit 0 means it finished in
    # time, by itself, and the open WebSocket was told the server is going away.
    stop = await asyncio.create_subprocess_exec(
        *(podman.executable, "--runtime", "runc", "stop", "--time", "10", first.name),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert (await subscriber.closed_with(within=20))[0] == 1001
    await stop.wait()
    assert podman.exit_code(first.name) == 0, podman.logs(first.name)

    # A new container on the same volume, moved to TLS on other ports: the rating is there,
    # and the healthcheck follows the port and the scheme.
    cert, key = self_signed(tmp_path)
    for path in (tmp_path, cert, key):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by the image's user
    second = _start(
        podman,
        image,
        env={"RATEWIRE_TLS__CERT": "/certs/cert.pem", "RATEWIRE_TLS__KEY": "/certs/key.pem"},
        mounts=[f"{data}:/data", f"{tmp_path}:/certs:ro"],
        verify=ssl.create_default_context(cafile=str(cert)),
    )
    context = ssl.create_default_context(cafile=str(cert))
    async with httpx.AsyncClient(base_url=second.base_url, verify=context, timeout=10) as http:
        kept = await http.get(
            f"/ratings/{rating['id']}", headers={"Authorization": f"Bearer {token}"}
        )
    assert kept.status_code == 200, kept.text
    assert kept.json()["score"] == 4 and kept.json()["userId"] == "alice"
    assert second.healthcheck().returncode == 0, podman.logs(second.name)
    podman("stop", "--time", "10", second.name)
    assert podman.exit_code(second.name) == 0, podman.logs(second.name)


@pytest.mark.postgresql
@pytest.mark.redis
async def test_two_instances_share_postgresql_and_redis(
    podman: Podman, image: str, fresh_postgres_url: str, redis_run_prefix: str, tmp_path: Path
) -> None:
    from sqlalchemy.engine import make_url

    database = make_url(fresh_postgres_url)
    if database.username is None:  # the tests' own role, not the image's user name
        database = database.set(username=getpass.getuser())
    cluster = {
        "RATEWIRE_STORAGE__BACKEND": "postgresql",
        "RATEWIRE_STORAGE__URL": database.render_as_string(hide_password=False),
        "RATEWIRE_BROKER__BACKEND": "redis",
        "RATEWIRE_BROKER__URL": REDIS_TEST_URL,
        "RATEWIRE_BROKER__PREFIX": f"{redis_run_prefix}_container",
    }
    writer = _start(podman, image, "--role", "all", env=cluster)
    # Its ports from a config file: the healthcheck finds them through serve's --config.
    reader = _start(podman, image, "--role", "all", env=cluster, config_dir=tmp_path)
    token = reader.token("bob")
    async with await WsClient.open(f"ws://127.0.0.1:{reader.ws_port}/", token) as subscriber:
        await subscriber.recv()
        await subscriber.subscribe("rating.game.cluster")
        async with httpx.AsyncClient(base_url=writer.base_url, timeout=10) as http:
            written = await http.post(
                "/ratings",
                json={"gameId": "cluster", "userId": "bob", "score": 5},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert written.status_code == 201, written.text
        [update] = await subscriber.updates(1, within=10)
        assert update["data"]["id"] == written.json()["id"]
    for instance in (writer, reader):
        assert instance.healthcheck().returncode == 0, podman.logs(instance.name)
        podman("stop", "--time", "10", instance.name)
        assert podman.exit_code(instance.name) == 0, podman.logs(instance.name)
