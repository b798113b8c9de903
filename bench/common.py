"""What the benchmarks share: the bench upstream, the site under Daphne (and nginx), each a
process of its own on 127.0.0.1; users logged in over HTTP; CPU and RSS sampling; the
websocket client (streaming_client.py) and its figures; percentiles and tables."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
ROOT, PYTHON = BENCH.parent, sys.executable
PASSWORD = "bench password, not a secret"
WS_CONNECT = re.compile(r'ws-connect="([^"]+)"')
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_setup() -> None:
    """In a child before exec: as many open files as allowed, and end when the bench ends."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_process(args: list[str], env: dict, log_path: Path, port: int) -> subprocess.Popen:
    """Start a process (before any thread: preexec_fn); wait until it listens on ``port``."""
    with open(log_path, "ab") as log:
        kwargs = {"stdout": log, "stderr": subprocess.STDOUT, "preexec_fn": child_setup}
        process = subprocess.Popen(args, cwd=ROOT, env=env, **kwargs)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args[:3]} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within 30 s")


def stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def workspace(prefix: str):
    """A temporary folder and an ExitStack; on an exception, the tails of the logs in it."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, ExitStack() as stack:
        try:
            yield Path(tmp), stack
        except Exception:
            for name in ("daphne.log", "upstream.log"):
                if tail := log_tail(Path(tmp) / name):
                    print(f"\n--- last lines of {name} ---\n{tail}", file=sys.stderr)
            raise


class Upstream:
    """The bench upstream (streaming_upstream.py) in its own process."""

    def __init__(self, tmp: Path, rate: float, tokens: int, paragraph: int):
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        args = [PYTHON, str(BENCH / "streaming_upstream.py"), "--port", str(port), "--rate"]
        args += [str(rate), "--tokens", str(tokens), "--paragraph", str(paragraph)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = start_process(args, env, tmp / "upstream.log", port)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60)

    def reset(self) -> None:
        self.http.post("/bench/reset").raise_for_status()

    def times(self) -> dict:
        return self.http.get("/bench/times").raise_for_status().json()

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


NGINX_CONF = """
worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
  access_log off; client_body_temp_path {tmp}/nginx-body; proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi; uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream chatsite {{ least_conn; {servers} }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{ listen 127.0.0.1:{port}; location / {{
    proxy_pass http://chatsite; proxy_http_version 1.1; proxy_buffering off; proxy_read_timeout 1h;
    proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;
    proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  }} }}
}}
"""


class Site:
    """chatsite under Daphne, the per-user limits raised; ``count`` > 1: that many Daphne
    processes behind nginx (Debian's nginx-light), least-connections, websocket upgrade."""

    def __init__(self, tmp: Path, env: dict, count: int = 1):
        self.tmp, self.count, self.env = tmp, count, {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env |= {"OPENAI_API_KEY": "", "CHAT_MODEL": "bench", "DJANGO_DEBUG": "1"}
        self.env |= {"CHAT_MESSAGES_PER_MINUTE": "100000", "CHAT_CONCURRENT_REPLIES": "100000"}
        self.env |= {"CHAT_SOCKETS_PER_USER": "100000"}
        self.env |= {"REDIS_URL": "", **env}
        self.ports = [free_port() for _ in range(count)]
        self.port = self.ports[0] if count == 1 else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None

    def manage(self, *args: str, extra_env: dict | None = None) -> str:
        """Run manage.py on the site's database; what it printed."""
        env, command = {**self.env, **(extra_env or {})}, [PYTHON, "manage.py", *args]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> Site:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if self.count > 1 and not Path(nginx).exists():
            raise SystemExit("--processes needs nginx (Debian: apt-get install nginx-light)")
        for index, port in enumerate(self.ports):
            # Daphne as bin/run starts it (chatsite/serve.py: on uvloop with CHAT_UVLOOP=1).
            args = [PYTHON, "-m", "chatsite.serve", "-b", "127.0.0.1", "-p", str(port)]
            log = self.tmp / ("daphne.log" if index == 0 else f"daphne-{index}.log")
            args.append("chatsite.asgi:application")
            self.processes.append(start_process(args, self.env, log, port))
        if self.count > 1:
            servers = " ".join(f"server 127.0.0.1:{port};" for port in self.ports)
            conf = self.tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=self.tmp, port=self.port, servers=servers))
            args = [nginx, "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"]
            self.nginx = start_process(args, dict(os.environ), self.tmp / "nginx.log", self.port)
        return self

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        for process in [self.nginx, *self.processes]:
            stop_process(process)


class Sampler(threading.Thread):
    """CPU seconds, RSS and open files (every second) of groups of processes, every 100 ms."""

    def __init__(self, pids: dict[str, list[int]]):
        super().__init__(name="sampler", daemon=True)
        self.groups = {name: [psutil.Process(pid) for pid in group] for name, group in pids.items()}
        self.samples: dict[str, list[tuple[float, float, int, int]]] = {n: [] for n in pids}
        self._done = threading.Event()

    def run(self) -> None:
        count = 0
        while not self._done.wait(0.1):
            count += 1
            for name, group in self.groups.items():
                with contextlib.suppress(psutil.Error):
                    self.samples[name].append(self.sample(group, count % 10 == 0))

    @staticmethod
    def sample(group: list[psutil.Process], with_files: bool) -> tuple[float, float, int, int]:
        cpu = rss = files = 0
        for process in group:
            with process.oneshot():
                times = process.cpu_times()
                cpu, rss = cpu + times.user + times.system, rss + process.memory_info().rss
                files += process.num_fds() if with_files else 0
        return time.monotonic(), cpu, rss, files if with_files else -1

    def stop(self) -> None:
        self._done.set()
        self.join(5)

    def window(self, name: str, start: float, end: float) -> dict:
        """CPU used between the samples around [start, end], peak RSS and open files in it."""
        samples = self.samples[name]
        before = [s for s in samples if s[0] <= start] or samples[:1]
        inside = [s for s in samples if start <= s[0] <= end]
        after = [s for s in samples if s[0] >= end] or samples[-1:]
        if not before or not after:
            return {"cpu_seconds": None, "rss_start_mb": None, "rss_peak_mb": None}
        first, last = before[-1], after[0]
        out = {"cpu_seconds": last[1] - first[1], "seconds": last[0] - first[0]}
        out["open_files_peak"] = max((s[3] for s in inside), default=-1)
        peak = max(s[2] for s in [first, *inside, last])
        return out | {"rss_start_mb": first[2] / MB, "rss_peak_mb": peak / MB}


def upstream_and_site(tmp: Path, stack: ExitStack, args, database: str = "", **env):
    """The bench upstream, and the site's environment on a migrated (temporary) database."""
    upstream = Upstream(tmp, args.rate, args.tokens, args.paragraph)
    stack.callback(upstream.stop)
    env["DATABASE_URL"] = database or f"sqlite:///{tmp / 'site.sqlite3'}"
    env |= {"OPENAI_BASE_URL": upstream.base_url, "CHANNEL_LAYER_PREFIX": f"bench-{os.getpid()}"}
    Site(tmp, env).manage("migrate", "--noinput")
    return upstream, env


CREATE_USERS = """
import os
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
User = get_user_model()
# One hash for all: hashing 1.5 million PBKDF2 rounds per user measures nothing of interest.
password = make_password(os.environ["BENCH_PASSWORD"])
users = [User(username=name, password=password) for name in os.environ["BENCH_USERS"].split()]
User.objects.bulk_create(users, ignore_conflicts=True)
"""


def create_users(site: Site, names: list[str]) -> None:
    extra_env = {"BENCH_USERS": " ".join(names), "BENCH_PASSWORD": PASSWORD}
    site.manage("shell", "-c", CREATE_USERS, extra_env=extra_env)


class Account:
    """One user logged in over HTTP, the way a browser does: it holds the session cookie."""

    def __init__(self, site_url: str, username: str):
        self.http = httpx.Client(base_url=site_url, trust_env=False, timeout=120)
        page = self.http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        form = {"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token[1]}
        response = self.http.post("/accounts/login/", data=form)
        if response.status_code != 302 or "sessionid" not in self.http.cookies:
            raise RuntimeError(f"could not log in as {username} ({response.status_code})")
        self.cookie = "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    def new_conversation(self) -> str:
        """Open a new conversation's page and return its socket's path, from the page's
        ws-connect (``/ws/conversations/new/``: the first message sent on it stores the
        conversation, as in the browser)."""
        created = self.http.post("/c/new/", headers={"X-CSRFToken": self.http.cookies["csrftoken"]})
        if created.status_code != 302:
            raise RuntimeError(f"POST /c/new/ answered {created.status_code}")
        return WS_CONNECT.search(self.http.get(created.headers["location"]).text)[1]

    def close(self) -> None:
        self.http.close()


def create_accounts(site: Site, count: int, prefix: str) -> list[Account]:
    names = [f"{prefix}{index:04d}" for index in range(count)]
    create_users(site, names)
    return [Account(site.url, name) for name in names]


def run_client(mode: str, spec: dict, tmp: Path, timeout: float, label: str = "") -> dict:
    """Run streaming_client.py in its own process, killed after ``timeout`` seconds."""
    spec_path, out_path = tmp / f"{mode}{label}-spec.json", tmp / f"{mode}{label}-out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    args = [PYTHON, str(BENCH / "streaming_client.py"), mode, str(spec_path), str(out_path)]
    with open(tmp / "client.log", "ab") as log:
        done = subprocess.run(args, cwd=ROOT, stdout=log, stderr=log, timeout=timeout, check=False)
    if done.returncode:
        tail = log_tail(tmp / "client.log")
        raise RuntimeError(f"the {mode} client failed ({done.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


def percentile(values: list[float], p: float, scale: float = 1) -> float | None:
    """Nearest-rank percentile (times ``scale``); None for no values."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * scale if values else None


def tally(streams: list[dict], times: dict, tokens: int, rate: float):
    """Per-token series (seconds), counts and errors of one client run's streams."""
    expected = list(range(1, tokens + 1))
    names = ("ttft_added", "token_latency", "send_to_upstream", "send_to_first_token")
    series = {name: [] for name in (*names, "upstream_lag")}
    counts, errors = collections.Counter(), collections.Counter()
    for stream in streams:
        written = times.get(stream["name"], {})
        sent, seen, shown = written.get("sent", []), stream["first_seen"], stream["shown"]
        errors.update([stream["error"]] if stream["error"] else [])
        counts.update(tokens_lost=len(set(expected) - set(shown)), frames=stream["frames"])
        counts.update(tokens_duplicated=len(shown) - len(set(shown)), bytes=stream["bytes"])
        counts.update(streams_misordered=shown != sorted(shown), snapshots=stream["snapshots"])
        incomplete = stream["status"] != "complete" or stream["final"] != expected
        counts.update(replies_incomplete=incomplete)
        if "arrived" in written and stream["sent_at"]:
            series["send_to_upstream"].append(written["arrived"] - stream["sent_at"])
        if seen and seen[0] is not None:
            series["send_to_first_token"].append(seen[0] - stream["sent_at"])
            series["ttft_added"] += [seen[0] - sent[0]] if sent else []
        pairs = zip(seen, sent, strict=False)
        series["token_latency"] += [at - wrote for at, wrote in pairs if at is not None]
        if sent and rate > 0:
            series["upstream_lag"] += [wrote - (sent[0] + i / rate) for i, wrote in enumerate(sent)]
    return series, counts, errors


def figures(result: dict, times: dict, rate: float, tokens: int) -> dict:
    """What the streams got, against when the upstream wrote each token (milliseconds)."""
    streams = result["streams"]
    series, counts, errors = tally(streams, times, tokens, rate)
    starts = [s["sent_at"] for s in streams if s["sent_at"]]
    ends = [s["last_frame_at"] for s in streams if s["last_frame_at"]]
    seconds = max(ends) - min(starts) if starts and ends else 0.0
    out = {"streams": len(streams), "tokens_expected": tokens * len(streams), **counts}
    for name, values in series.items():  # token_latency_p50_ms, token_latency_max_ms, ...
        for p, key in ((50, "p50"), (99, "p99"), (100, "max")):
            out[f"{name}_{key}_ms"] = percentile(values, p, 1e3)
    return out | {
        "frames_per_second": counts["frames"] / seconds if seconds else None,
        "megabytes": counts["bytes"] / MB,
        "seconds": seconds,
        "client_cpu_seconds": result["cpu_seconds"],
        "errors": dict(errors.most_common(5)),
    }


def number(value, digits: int = 1) -> str:
    """A figure for a table: counts (digits 0) with thousands separators, others rounded."""
    if value is None or isinstance(value, str):
        return value or "-"
    return f"{value:,}" if isinstance(value, int) and not digits else f"{value:,.{digits}f}"


def print_table(title: str, header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate([header, *rows]):
        cells = [str(row[0]).ljust(widths[0])]
        cells += [str(cell).rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  " + "   ".join(cells).rstrip())
        if index == 0:
            print("  " + "   ".join("-" * width for width in widths))


def print_load(when: str) -> None:
    load, cpus = os.getloadavg(), len(os.sched_getaffinity(0))
    print(f"load average {when}: {' '.join(f'{n:.2f}' for n in load)} on {cpus} CPUs (nproc)")


def print_targets(targets: dict[str, bool]) -> None:
    print("\ntargets (from the issue):")
    for target, met in targets.items():
        print(f"  {'met    ' if met else 'NOT MET'}  {target}")
    print_load("after")
