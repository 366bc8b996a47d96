"""`stablecog-emulator`: option parsing, and the real process started, called and stopped."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from emulator.config import parse_cli
from gateway.version import VERSION
from tests.emulator.emulator_support import SMALL, TOKEN, auth
from tests.fixtures import CREATE
from tests.processes import ROOT, EmulatorProcess


def test_flags_env_vars_and_defaults() -> None:
    defaults = parse_cli([], {})
    assert (defaults.host, defaults.port, defaults.accounts) == ("127.0.0.1", 8000, ())
    assert defaults.config.latency_seconds == 1.5
    assert defaults.config.rate_limit_per_second == 10
    assert defaults.config.queue_limit == 4
    assert defaults.config.worker_timeout_seconds == 240
    assert defaults.config.initial_credits == 100
    assert not defaults.config.accept_any_token
    assert defaults.config.image_url_hosts == ()

    env = {
        "STABLECOG_EMULATOR_LISTEN": "0.0.0.0:9000",
        "STABLECOG_EMULATOR_LATENCY": "0.25",
        "STABLECOG_EMULATOR_ACCOUNT": f"{TOKEN}, sc-other",
        "STABLECOG_EMULATOR_ACCEPT_ANY_TOKEN": "yes",
        "STABLECOG_EMULATOR_RATE_LIMIT": "0",
        "STABLECOG_EMULATOR_PUBLIC_URL": "https://cdn.example/",
        "STABLECOG_EMULATOR_IMAGE_URL_HOST": "images.example, ,Demo.Example",
    }
    from_env = parse_cli([], env)
    assert (from_env.host, from_env.port) == ("0.0.0.0", 9000)
    assert from_env.accounts == (TOKEN, "sc-other")
    assert from_env.config.latency_seconds == 0.25
    assert from_env.config.accept_any_token
    assert from_env.config.rate_limit_per_second == 0
    assert from_env.config.public_url == "https://cdn.example"
    assert from_env.config.image_url_hosts == ("images.example", "demo.example")

    flags = parse_cli(
        ["--latency", "0", "--queue-limit", "2", "--worker-timeout", "9", "--account", "x"], env
    )
    assert flags.config.latency_seconds == 0  # the flag wins over the variable
    assert (flags.config.queue_limit, flags.config.worker_timeout_seconds) == (2, 9)
    assert flags.accounts == ("x",)
    assert flags.config.image_url_hosts == ("images.example", "demo.example")
    hosts = parse_cli(["--image-url-host", "a.example", "--image-url-host", "[::1]"], env)
    assert hosts.config.image_url_hosts == ("a.example", "::1")  # the flags win over the variable


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {"STABLECOG_EMULATOR_LATENCY": "soon"}, "STABLECOG_EMULATOR_LATENCY"),
        ([], {"STABLECOG_EMULATOR_ACCEPT_ANY_TOKEN": "maybe"}, "ACCEPT_ANY_TOKEN"),
        (["--rate-limit", "-1"], {}, "--rate-limit"),
        (["--listen", "nowhere"], {}, "--listen"),
        (["--public-url", "cdn.example"], {}, "public_url"),
        (["--image-url-host", "example.com:443"], {}, "--image-url-host"),
        ([], {"STABLECOG_EMULATOR_IMAGE_URL_HOST": "https://x"}, "IMAGE_URL_HOST"),
    ],
)
def test_bad_values_exit_naming_the_setting(
    argv: list[str], env: dict[str, str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_cli(argv, env)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


def test_process_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    emulator = EmulatorProcess(
        ["--latency", "0", "--account", TOKEN],
        tmp_path / "emulator.log",
        env={"STABLECOG_EMULATOR_INITIAL_CREDITS": "7"},
    )
    emulator.start(timeout=15)  # it listens on port 0 and logs the port it got
    try:
        assert re.fullmatch(
            r"stablecog-emulator listening on http://127\.0\.0\.1:[1-9][0-9]*",
            emulator.listening_line.rstrip(),
        )
        assert emulator.base_url == f"http://127.0.0.1:{emulator.port}"
        response = httpx.post(emulator.base_url + CREATE, json=SMALL, headers=auth(), timeout=5)
        assert response.status_code == 200
        assert response.json()["remaining_credits"] == 6
        image = httpx.get(response.json()["outputs"][0]["url"], timeout=5)
        assert image.headers["Content-Type"] == "image/jpeg"
        emulator.terminate()
        returncode = emulator.wait(timeout=15)
        stderr = emulator.logs()
        assert returncode == 0, stderr
        assert "Traceback" not in stderr
        assert TOKEN not in stderr
    finally:
        emulator.kill()


def test_version_is_printed_like_the_gateways() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emulator", "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stablecog-emulator {VERSION}"


def test_a_busy_port_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        emulator = EmulatorProcess(["--listen", f"127.0.0.1:{port}"], tmp_path / "emulator.log")
        with pytest.raises(RuntimeError, match="exited with code 1"):
            emulator.start(timeout=15)
    assert (
        f"cannot listen on --listen / STABLECOG_EMULATOR_LISTEN 127.0.0.1:{port}: "
        "address already in use"
    ) in emulator.logs()
