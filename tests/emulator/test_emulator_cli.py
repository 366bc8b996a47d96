"""`stablecog-emulator`: option parsing, and the real process started, called and stopped."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emulator.config import parse_cli
from tests.emulator.emulator_support import CREATE, SMALL, TOKEN, auth

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Lines of stderr up to the one containing `marker`."""
    assert process.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=0.1):
                continue
            line = process.stderr.readline()
            if not line:
                break
            seen.append(line)
            if marker in line:
                return line
    raise AssertionError(f"no {marker!r} in output: {''.join(seen)}")


def test_process_serves_and_exits_cleanly_on_sigterm() -> None:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "STABLECOG_EMULATOR_INITIAL_CREDITS": "7",
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "emulator"),
            *("--listen", f"127.0.0.1:{port}", "--latency", "0", "--account", TOKEN),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        ready = _read_until(process, "stablecog-emulator listening on", timeout=15)
        assert ready.rstrip().endswith(f"listening on http://127.0.0.1:{port}")
        base = f"http://127.0.0.1:{port}"
        response = httpx.post(base + CREATE, json=SMALL, headers=auth(), timeout=5)
        assert response.status_code == 200
        assert response.json()["remaining_credits"] == 6
        image = httpx.get(response.json()["outputs"][0]["url"], timeout=5)
        assert image.headers["Content-Type"] == "image/jpeg"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert TOKEN not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
