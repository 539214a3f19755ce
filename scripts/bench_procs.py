"""The processes `make bench` measures from outside: their CPU time, their /metrics, and a
proxy that counts the Streams API requests a follower makes.

CPU time is user + system of the whole process (every thread), read from
`/proc/<pid>/stat` while it runs, or from `wait4`'s rusage when it ends: the
same way for ks2os and for the bare-library processes it is compared with.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command name: state is field 3 of stat(5); utime and stime are 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wait_cpu(process: subprocess.Popen[Any], timeout_s: float) -> float:
    """Wait for `process` to end; its user + system CPU seconds (rusage, all threads)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            process.kill()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            raise TimeoutError(f"process {process.args!r} still running after {timeout_s:.0f} s")
        time.sleep(0.05)  # polling a child's exit, not standing in for a sync point


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float] | None:
    """A follower's /metrics, summed over shards by metric name; None if not serving yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    totals: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        totals[name.split("{", 1)[0]] += float(value)
    return dict(totals)


def resolved(metrics: dict[str, float]) -> int:
    """Changes the follower has finished with: applied, stale or dead-lettered."""
    names = ("applied", "stale", "dead_lettered")
    return int(sum(metrics.get(f"ks2os_follow_{name}_total", 0.0) for name in names))


@dataclass
class Ks2os:
    """One `ks2os` command as a subprocess, with its log file."""

    process: subprocess.Popen[Any]
    log_path: Path
    started: float  # monotonic

    def tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " ".join(lines[-2:])


@contextlib.contextmanager
def ks2os(
    root: Path, config: Path, command: str, mapping: Path, log_path: Path, *extra: str
) -> Iterator[Ks2os]:
    """`python -m sync <command>` as a subprocess (its own GIL); SIGTERM when left."""
    argv = [
        sys.executable,
        "-m",
        "sync",
        "--config",
        str(config),
        "--log-level",
        "WARNING",
        "--log-format",
        "text",
        command,
        "--mapping",
        str(mapping),
        *extra,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        run = Ks2os(process, log_path, time.monotonic())
        try:
            yield run
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


class CountingProxy:
    """An HTTP proxy in front of the Streams API that counts requests per operation.

    Only for counting a follower's polling: it forwards each POST as it came
    (signed headers included) and answers with what the emulator said; a GET
    answers the counts so far as JSON. It runs as a process of its own
    (`proxy_process`), so it never shares a GIL with what is measured.
    """

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                operation = self.headers.get("X-Amz-Target", "?").rpartition(".")[2]
                proxy._count(operation)
                status, headers, answer = proxy._forward(self.path, dict(self.headers), body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:
                answer = json.dumps(proxy.counts()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._local = threading.local()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def _count(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def _forward(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection(*self._target)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            connection.close()  # a dropped keep-alive connection: once more on a new one
            connection = self._local.connection = http.client.HTTPConnection(*self._target)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
        return response.status, response.getheaders(), response.read()


@contextlib.contextmanager
def proxy_process(target_url: str) -> Iterator[ProxyProcess]:
    """A `CountingProxy` in a process of its own, in front of `target_url`."""
    process = subprocess.Popen(
        [sys.executable, __file__, "proxy", target_url],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the counting proxy did not start: {url!r}")
        yield ProxyProcess(url)
    finally:
        process.terminate()
        process.wait(30)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


@dataclass
class ProxyProcess:
    url: str

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url + "/_counts", timeout=5) as answer:
            counts: dict[str, int] = json.loads(answer.read())
        return counts


def _serve_proxy(target_url: str) -> None:
    proxy = CountingProxy(target_url).start()
    print(proxy.url, flush=True)
    sys.stdin.read()  # until the bench closes the pipe or ends this process


if __name__ == "__main__":
    if sys.argv[1:2] == ["proxy"]:
        _serve_proxy(sys.argv[2])


@contextlib.contextmanager
def profiled(pid: int, output: Path | None) -> Iterator[None]:
    """py-spy sampling process `pid` (nonblocking: it never pauses it) while inside; the
    collapsed stacks go to `output`. Nothing when `output` is None."""
    if output is None:
        yield
        return
    spy = Path(sys.executable).with_name("py-spy")
    argv = [str(spy), "record", "--pid", str(pid), "--nonblocking", "--gil", "--rate", "200"]
    argv += ["--format", "raw", "--output", str(output)]
    sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            sampler.wait(60)
        except subprocess.TimeoutExpired:
            sampler.kill()
            sampler.wait()


def top_functions(collapsed: Path, count: int = 8) -> list[tuple[str, float]]:
    """The functions with the most self time in py-spy's collapsed stacks: (name, share)."""
    samples: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        frame = stack.rsplit(";", 1)[-1]
        # "function (path/file.py:line)" -> "function (file.py)"
        name, _, where = frame.partition(" (")
        path = where.rsplit(":", 1)[0]
        samples[f"{name} ({Path(path).name})"] += int(number)
        total += int(number)
    return [(name, n / total) for name, n in samples.most_common(count)] if total else []
