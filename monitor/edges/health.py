"""Readiness: whether the worker's dependencies (Kafka, Redis, the guard) are up, and the one HTTP server that
answers `/ready` beside Prometheus' `/metrics` (on settings.telemetry.metrics_host and metrics_port), for
compose and Kubernetes probes.

    GET /ready    200 {"ready": true, "kafka": "ok", ...}   503 with the reason per service that is not up
    GET /live     200 while the process serves HTTP (a liveness probe that never waits on Kafka or Redis)
    GET /metrics  the Prometheus exposition of monitor.telemetry

The worker reports: the guard once it is loaded, Kafka once the consumer and producer have started and again
after every failure and recovery, Redis after its start-up ping and every failure and recovery. Every
service starts as "starting", so a fresh process answers 503 until all three have been reported up."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import make_wsgi_app

SERVICES = ("kafka", "redis", "guard")


class Readiness:
    """Per service: up, or the reason it is not. Written by the event loop, read by the HTTP thread."""

    def __init__(self, services: Iterable[str] = SERVICES) -> None:
        self._lock = threading.Lock()
        self._down: dict[str, str] = {service: "starting" for service in services}
        self._up: set[str] = set()

    def up(self, service: str) -> None:
        with self._lock:
            self._down.pop(service, None)
            self._up.add(service)

    def down(self, service: str, reason: str) -> None:
        with self._lock:
            self._up.discard(service)
            self._down[service] = reason

    def report(self) -> tuple[bool, dict[str, str]]:
        """(ready, service -> "ok" or the reason it is not up)."""
        with self._lock:
            detail = {service: "ok" for service in self._up} | dict(self._down)
            return not self._down, dict(sorted(detail.items()))


def wsgi_app(readiness: Readiness) -> WSGIApplication:
    metrics = make_wsgi_app()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/ready":
            ready, detail = readiness.report()
            body = json.dumps({"ready": ready, **detail}).encode()
            status = "200 OK" if ready else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/live":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        response: Iterable[bytes] = metrics(environ, start_response)
        return response

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: no access log
        pass


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:  # a host name: resolved as IPv4, like the default address
        return False


def serve_http(port: int, readiness: Readiness, host: str = "0.0.0.0") -> WSGIServer:
    """Serve /metrics, /ready and /live on `host`:`port` (an IPv4 or IPv6 address or a host name) from a
    daemon thread; OSError if the port is taken or the address is not this machine's."""
    server_class = _Server6 if _is_ipv6(host) else _Server
    server = make_server(host, port, wsgi_app(readiness), server_class, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def not_reachable(service: str, address: str, setting: str) -> str:
    """The one line a missing service gets: where it was looked for and how to start it."""
    return (
        f"{service} is not reachable at {address}: start it with bash scripts/services.sh up "
        f"(or point {setting} at a running one)"
    )
