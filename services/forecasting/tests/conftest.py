"""Fixtures for the forecasting unit tests: a scripted local HTTP weather server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@dataclass
class Scripted:
    """What the server answers, in order; the last entry repeats. Entries: (status, delay_s, body)."""

    responses: list[tuple[int, float, bytes, dict[str, str]]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def next(self) -> tuple[int, float, bytes, dict[str, str]]:
        if len(self.responses) > 1:
            return self.responses.pop(0)
        return self.responses[0]


class WeatherServer:
    def __init__(self) -> None:
        self.script = Scripted()
        script = self.script

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                script.requests.append(self.path)
                status, delay, body, headers = script.next()
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        port = self.httpd.server_address[1]
        return f"http://127.0.0.1:{port!s}"

    def answer(self, *entries: tuple[int, float, bytes] | tuple[int, float, bytes, dict[str, str]]) -> None:
        self.script.responses[:] = [(e[0], e[1], e[2], dict(e[3]) if len(e) > 3 else {}) for e in entries]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorded_forecast_bytes() -> bytes:
    return (DATA / "open_meteo_forecast.json").read_bytes()


@pytest.fixture
def recorded_forecast() -> dict:
    return json.loads((DATA / "open_meteo_forecast.json").read_text(encoding="utf-8"))


@pytest.fixture
def weather_server() -> Iterator[WeatherServer]:
    server = WeatherServer()
    yield server
    server.close()
