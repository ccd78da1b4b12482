"""compose.yaml against the real programs: its NATS configuration is one nats-server
accepts and starts from with room for memstream's events, and every memstream command
and variable it uses exists."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import nats
import pytest
import yaml

from memstream.consumers.cli import cli
from memstream.consumers.nats_server import find_nats_server_binary
from memstream.consumers.settings import ENV_VARS
from memstream.consumers.streams import HEADER_ROOM
from memstream.schemas.events import DEFAULT_MAX_EVENT_BYTES
from tests.waiting import wait_for_sync

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
DOCKERFILE = COMPOSE.with_name("Dockerfile")
MEMSTREAM_IMAGE = "memstream:local"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture
def nats_command(compose: dict[str, Any], tmp_path: Path) -> list[str]:
    """The nats service's command line, its configs written where it reads them."""
    service = compose["services"]["nats"]
    command = [str(arg) for arg in service["command"]]
    if command[0] == "nats-server":
        command = command[1:]
    for config in service.get("configs", []):
        local = tmp_path / Path(config["target"]).name
        local.write_text(compose["configs"][config["source"]]["content"])
        command = [str(local) if arg == config["target"] else arg for arg in command]
    return command


def _check(command: list[str]) -> tuple[bool, str]:
    """``nats-server -t``: whether it takes the command line and its configuration (an
    unknown flag prints the usage and exits 0, so its words are checked too)."""
    done = subprocess.run(
        [str(find_nats_server_binary()), *command, "-t"], capture_output=True, text=True
    )
    said = done.stdout + done.stderr
    return done.returncode == 0 and "is valid" in said and "not defined" not in said, said


def test_nats_server_accepts_the_compose_configuration(nats_command: list[str]) -> None:
    ok, said = _check(nats_command)
    assert ok, said
    # The check can fail: the flag compose.yaml once passed does not exist.
    assert not _check(["--max_payload", "2MB"])[0]


@pytest.fixture
def compose_nats(nats_command: list[str], tmp_path: Path) -> Iterator[str]:
    """nats-server started from the compose command, on a free loopback port (flags
    override the file's listen) and a store of the test's own."""
    config = Path(next(arg for arg in nats_command if arg.endswith(".conf")))
    text = config.read_text()
    assert "store_dir: /data" in text
    config.write_text(text.replace("store_dir: /data", f"store_dir: {tmp_path / 'store'}"))
    with socket.socket() as s, socket.socket() as m:
        s.bind(("127.0.0.1", 0))
        m.bind(("127.0.0.1", 0))
        port, monitor = s.getsockname()[1], m.getsockname()[1]
    process = subprocess.Popen(
        [str(find_nats_server_binary()), *nats_command, "-a", "127.0.0.1", "-p", str(port),
         "-m", str(monitor)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def listening() -> bool:
            assert process.poll() is None, "nats-server exited"
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for_sync(listening, timeout=10, what="nats-server to listen")
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


async def test_the_compose_nats_takes_memstreams_largest_event(compose_nats: str) -> None:
    nc = await nats.connect(compose_nats)
    try:
        assert nc.max_payload >= DEFAULT_MAX_EVENT_BYTES + HEADER_ROOM
        info = await nc.jetstream().account_info()
        assert info.limits is not None  # JetStream is on
    finally:
        await nc.close()


def _expand(arg: str) -> str:
    """Compose's ``${VAR:-default}``, as compose fills it in with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg)


def _memstream_commands(compose: dict[str, Any]) -> list[list[str]]:
    """The command lines of the services that run the memstream image (its entrypoint
    is ``memstream``), and of any that call ``memstream`` in a shell."""
    found = []
    for service in compose["services"].values():
        command = service.get("command")
        if not command:
            continue
        if service.get("image") == MEMSTREAM_IMAGE:
            found.append([_expand(str(arg)) for arg in command])
            continue
        line = command[-1] if command[0] == "sh" else shlex.join(command)
        for part in line.split("&&"):
            words = shlex.split(part)
            if "memstream" in words:
                found.append(words[words.index("memstream") + 1 :])
    return found


def _parse(args: list[str]) -> None:
    """Parse a memstream command line as the CLI would, without running it: every
    command, option and choice must be one it has."""
    command: click.Command = cli
    ctx: click.Context | None = None
    while True:
        ctx = command.make_context("memstream", list(args), parent=ctx)
        if not isinstance(command, click.Group):
            return
        # memstream's groups take no options of their own: the command comes first.
        name, sub, args = command.resolve_command(ctx, list(args))
        assert sub is not None, name
        command = sub


def test_every_memstream_command_in_compose_exists(compose: dict[str, Any]) -> None:
    commands = _memstream_commands(compose)
    assert len(commands) >= 3
    for args in commands:
        _parse(args)
    with pytest.raises(click.UsageError):
        _parse(["serve", "--role", "nope"])


def test_every_memstream_variable_in_compose_is_known(compose: dict[str, Any]) -> None:
    known = set(ENV_VARS.values())
    for service in [compose["x-memstream"], *compose["services"].values()]:
        for name in service.get("environment", {}):
            assert name in known, f"{name} is not a memstream setting"


def _dockerfile() -> dict[str, str]:
    """The Dockerfile's last stage: instruction -> its argument (line continuations
    joined; ENV gathered)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    last = text[text.rindex("\nFROM ") :]
    found: dict[str, str] = {}
    for line in last.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.isupper() and word:
            found[word] = (found.get(word, "") + " " + rest).strip() if word == "ENV" else rest
    return found


def test_the_image_runs_memstream_unprivileged_and_checks_readyz() -> None:
    image = _dockerfile()
    assert ["memstream"] == json.loads(image["ENTRYPOINT"])
    _parse(json.loads(image["CMD"]))
    user = image["USER"]
    assert user not in ("root", "0")
    port = re.search(r"MEMSTREAM_METRICS_PORT=(\d+)", image["ENV"])
    assert port is not None
    assert f"127.0.0.1:{port.group(1)}/readyz" in image["HEALTHCHECK"]
    assert port.group(1) in image["EXPOSE"].split()


def test_every_port_in_compose_is_one_the_service_serves(compose: dict[str, Any]) -> None:
    """Each published port of a memstream service is its metrics port or the port its
    command serves; the health checks ask ports that are configured."""
    base_env = compose["x-memstream"]["environment"]
    for name, service in compose["services"].items():
        published = {int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])}
        if service.get("image") != MEMSTREAM_IMAGE:
            continue
        command = [_expand(str(a)) for a in service["command"]]
        served = {int(base_env["MEMSTREAM_METRICS_PORT"])}
        for flag in ("--http", "--metrics-port"):
            if flag in command:
                served.add(int(command[command.index(flag) + 1]))
        assert published <= served, (
            f"{name} publishes {published - served}, which it does not serve"
        )
    nats_conf = compose["configs"]["nats_conf"]["content"]
    monitor = re.search(r"http_port: (\d+)", nats_conf)
    assert monitor is not None
    nats_check = " ".join(compose["services"]["nats"]["healthcheck"]["test"])
    assert f"127.0.0.1:{monitor.group(1)}/healthz" in nats_check
    assert "memq.*.*" in nats_conf  # the query mapping partitions need
