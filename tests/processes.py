"""Servers as real child processes: gateways (`python -m gateway`), for multi-process and signal
tests, and the emulator (`python -m emulator`).

Each child binds port 0 and the port it got is read from its own log, so no port is ever
probed, closed and handed over (another process could take it in between).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class LogTail:
    """The complete lines a child has appended to its log file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]


def wait_for_line(
    log_path: Path,
    parse: Callable[[str], T | None],
    *,
    process: subprocess.Popen[bytes],
    timeout: float,
    what: str,
) -> T:
    """Read a child's log file as it grows until `parse` makes something of a line; return
    that. RuntimeError, with the log, if the child exits first or `timeout` passes."""
    tail = LogTail(log_path)
    deadline = time.monotonic() + timeout
    while True:
        exited = process.poll() is not None  # before reading: its last lines are in the file
        for line in tail.lines():
            found = parse(line)
            if found is not None:
                return found
        if exited:
            raise RuntimeError(
                f"{what}: the process exited with code {process.returncode}:\n"
                + log_path.read_text(errors="replace")
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what}: not within {timeout} s:\n" + log_path.read_text(errors="replace")
            )
        time.sleep(0.02)


def json_entry(line: str, message: str) -> dict[str, Any] | None:
    """The JSON log object on `line` if its "message" is `message`."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and entry.get("message") == message else None


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any gateway or emulator setting, plus `env`."""
    prefixes = ("GATEWAY_", "STABLECOG_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(prefixes)}, **env}


class ChildProcess:
    """A child process of the tests with its output in `log_path`; killed by process id."""

    log_path: Path
    process: subprocess.Popen[bytes] | None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class GatewayProcess(ChildProcess):
    """One `python -m gateway` child, logs captured to a file.

    It listens on 127.0.0.1 port 0 (gRPC and metrics) unless `env` says otherwise; `port`,
    `metrics_port` and `target` are known once `start` has returned, read from its
    "gateway serving" log line (logged at info: a GATEWAY_LOG_LEVEL above it is refused).
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        level = env.get("GATEWAY_LOG_LEVEL", "info").strip().lower()
        if level in ("warning", "error", "critical"):
            raise ValueError(
                f"GATEWAY_LOG_LEVEL={level} hides the 'gateway serving' line (at info) "
                "that the ports are read from"
            )
        self.log_path = log_path
        self.env = _child_env(
            {"GATEWAY_LISTEN": "127.0.0.1:0", "GATEWAY_METRICS_LISTEN": "127.0.0.1:0", **env}
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._metrics_port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway's port is known once start() has returned")
        return self._port

    @property
    def metrics_port(self) -> int:
        if self._metrics_port is None:
            raise RuntimeError("the gateway's metrics port is known once start() has returned")
        return self._metrics_port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        """Start the child; return once it has said where it serves and health says SERVING."""
        deadline = time.monotonic() + timeout
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            serving = await asyncio.to_thread(
                wait_for_line,
                self.log_path,
                lambda line: json_entry(line, "gateway serving"),
                process=self.process,
                timeout=timeout,
                what="gateway serving",
            )
        except RuntimeError as error:
            self.kill()
            raise RuntimeError(f"gateway did not start: {error}") from None
        self._port, self._metrics_port = int(serving["grpc_port"]), int(serving["metrics_port"])
        async with grpc.aio.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"gateway exited at start:\n{self.logs()}")
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        self.kill()
        raise RuntimeError(f"gateway not SERVING within {timeout} s:\n{self.logs()}")

    async def wait_for_log(self, message: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first JSON log line with this "message", once the child has written it."""
        assert self.process is not None
        return await asyncio.to_thread(
            wait_for_line,
            self.log_path,
            lambda line: json_entry(line, message),
            process=self.process,
            timeout=timeout,
            what=f"log line {message!r}",
        )

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        code = self.process.poll()
        if code is None:
            self.kill()
            raise TimeoutError(f"gateway still running {timeout} s after SIGTERM")
        return code


_EMULATOR_LISTENING = re.compile(r"stablecog-emulator listening on (http://\S+:(\d+))\s*$")


class EmulatorProcess(ChildProcess):
    """One `python -m emulator` child on 127.0.0.1 port 0, logs captured to a file; `base_url`
    and `port` are read from its "stablecog-emulator listening on http://HOST:PORT" line."""

    def __init__(
        self, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = ["--listen", "127.0.0.1:0", *args]  # a later --listen in args wins
        self.log_path = log_path
        self.env = {**_child_env(env or {}), "PYTHONPATH": str(ROOT)}
        self.process: subprocess.Popen[bytes] | None = None
        self.listening_line = ""
        self.base_url = ""
        self.port = 0

    def start(self, timeout: float = 15.0) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emulator", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            match = wait_for_line(
                self.log_path,
                _EMULATOR_LISTENING.search,
                process=self.process,
                timeout=timeout,
                what="stablecog-emulator listening",
            )
        except RuntimeError:
            self.kill()
            raise
        self.listening_line = match.group(0)
        self.base_url, self.port = match.group(1), int(match.group(2))

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)
