"""How fast the site delivers streamed replies, beside what the wire alone allows.

    .venv/bin/python bench/streaming.py                              # 1, 100, 200 streams
    .venv/bin/python bench/streaming.py --streams 1,100,200 --rate 100 --tokens 200
    .venv/bin/python bench/streaming.py --idle-sockets 5000          # RSS of 5,000 idle sockets
    .venv/bin/python bench/streaming.py --postgres --redis --profile

Starts, each as its own process on 127.0.0.1:

- the bench upstream (streaming_upstream.py): numbered tokens at ``--rate`` per
  second, recording when it wrote each one;
- the site under Daphne on a throwaway database (temporary SQLite file, or a
  throwaway PostgreSQL database with ``--postgres``), pointed at that upstream,
  with the per-user limits raised;
- for each concurrency level, the client (streaming_client.py): N websockets,
  as N logged-in pages, send a message at the same moment and record every
  frame; then the same N streams read straight from the upstream with httpx,
  so each figure has its physical limit beside it.

Daphne's (and the upstream's) CPU time and RSS are sampled every 100 ms. The
database statements of one reply are counted in-process for a short and a long
reply (streaming_statements.py). Prints tables, with the issue's targets, and
writes everything to ``--json`` (default ``bench/results/streaming-<time>.json``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import math
import os
import platform
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable
PY_SPY = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy") or "py-spy"
PASSWORD = "bench password, not a secret"
WS_CONNECT = re.compile(r'ws-connect="([^"]+)"')
MB = 1024 * 1024

# The targets.
TTFT_P50_ONE_STREAM_MS = 5
TTFT_P99_100_STREAMS_MS = 50
DELTA_P99_200_STREAMS_MS = 200
IDLE_SOCKETS, IDLE_RSS_MB = 5000, 500


# --- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g} s")


def child_setup() -> None:
    """In a child before exec: as many open files as allowed, and end when the bench ends."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_process(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    # Started before any thread of this process: preexec_fn is only safe then.
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=child_setup
        )


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


class Upstream:
    """The bench upstream (streaming_upstream.py) in its own process."""

    def __init__(self, tmp: Path, rate: float, tokens: int, paragraph: int):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = tmp / "upstream.log"
        args = [PYTHON, str(BENCH / "streaming_upstream.py"), "--port", str(self.port)]
        args += ["--rate", str(rate), "--tokens", str(tokens), "--paragraph", str(paragraph)]
        self.process = start_process(args, {**os.environ, "PYTHONUNBUFFERED": "1"}, self.log)
        wait_for_port(self.port, self.process)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", trust_env=False)

    def reset(self) -> None:
        self.http.post("/bench/reset").raise_for_status()

    def times(self) -> dict:
        response = self.http.get("/bench/times", timeout=60)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.http.close()
        stop_process(self.process)


class Site:
    """chatsite under Daphne in its own process, with the per-user limits raised."""

    def __init__(self, tmp: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "daphne.log"
        self.env = {
            **os.environ,
            "OPENAI_API_KEY": "",
            "CHAT_MODEL": "bench",
            "DJANGO_DEBUG": "1",
            "REDIS_URL": "",
            "CHAT_MESSAGES_PER_MINUTE": "100000",
            "CHAT_CONCURRENT_REPLIES": "100000",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str, extra_env: dict | None = None) -> None:
        done = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stdout}{done.stderr}")

    def start(self) -> Site:
        args = [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
        self.process = start_process([*args, "chatsite.asgi:application"], self.env, self.log)
        wait_for_port(self.port, self.process)
        return self

    @property
    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> None:
        stop_process(self.process)


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    upstream chatsite {{
        least_conn;
{servers}
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://chatsite;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
            proxy_buffering off;
        }}
    }}
}}
"""


class ProxiedSite:
    """``count`` Daphne processes behind nginx (from Debian's packages), as one site."""

    def __init__(self, tmp: Path, env: dict, count: int):
        self.tmp = tmp
        self.sites = []
        for index in range(count):
            folder = tmp / f"daphne-{index}"
            folder.mkdir(exist_ok=True)
            self.sites.append(Site(folder, env))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "nginx-error.log"
        self.nginx: subprocess.Popen | None = None

    def manage(self, *args: str, extra_env: dict | None = None) -> None:
        self.sites[0].manage(*args, extra_env=extra_env)

    def start(self) -> ProxiedSite:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise SystemExit("--processes needs nginx (Debian: apt-get install nginx-light)")
        for site in self.sites:
            site.start()
        servers = "\n".join(f"        server 127.0.0.1:{site.port};" for site in self.sites)
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.tmp, port=self.port, servers=servers))
        args = [nginx, "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"]
        self.nginx = start_process(args, dict(os.environ), self.tmp / "nginx.log")
        wait_for_port(self.port, self.nginx)
        return self

    @property
    def pids(self) -> list[int]:
        return [pid for site in self.sites for pid in site.pids]

    @property
    def process(self) -> subprocess.Popen | None:
        return self.sites[0].process  # the one a profile attaches to

    def stop(self) -> None:
        stop_process(self.nginx)
        for site in self.sites:
            site.stop()


class ProcessGroup:
    """Several processes read as one by the Sampler: CPU and RSS added up."""

    def __init__(self, pids: list[int]):
        self.processes = [psutil.Process(pid) for pid in pids]

    def oneshot(self):
        return contextlib.nullcontext()

    def cpu_times(self):
        times = [process.cpu_times() for process in self.processes]
        return SimpleNamespace(user=sum(t.user for t in times), system=sum(t.system for t in times))

    def memory_info(self):
        return SimpleNamespace(rss=sum(p.memory_info().rss for p in self.processes))

    def num_fds(self) -> int:
        return sum(process.num_fds() for process in self.processes)


CREATE_USERS = """
import os
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
User = get_user_model()
# One hash for all: hashing 1.5 million PBKDF2 rounds per user measures nothing of interest.
password = make_password(os.environ["BENCH_PASSWORD"])
names = os.environ["BENCH_USERS"].split(",")
users = [User(username=name, password=password) for name in names]
User.objects.bulk_create(users, ignore_conflicts=True)
"""


class Sampler(threading.Thread):
    """CPU seconds (user + system) and RSS of some processes, every ``interval`` seconds."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1, max_seconds: float = 7200):
        super().__init__(name="sampler", daemon=True)
        self.processes = {
            name: ProcessGroup(pid) if isinstance(pid, list) else psutil.Process(pid)
            for name, pid in pids.items()
        }
        self.interval = interval
        self.max_samples = int(max_seconds / interval)
        self.samples: dict[str, list[tuple[float, float, int, int]]] = {n: [] for n in pids}
        self._done = threading.Event()

    def run(self) -> None:
        count = 0
        while count < self.max_samples and not self._done.wait(self.interval):
            count += 1
            for name, process in self.processes.items():
                try:
                    with process.oneshot():
                        cpu = process.cpu_times()
                        rss = process.memory_info().rss
                        fds = process.num_fds() if count % 10 == 0 else -1
                except psutil.Error:
                    continue
                self.samples[name].append((time.monotonic(), cpu.user + cpu.system, rss, fds))

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
        return {
            "cpu_seconds": last[1] - first[1],
            "seconds": last[0] - first[0],
            "rss_start_mb": first[2] / MB,
            "rss_peak_mb": max(s[2] for s in [first, *inside, last]) / MB,
            "open_files_peak": max((s[3] for s in inside), default=-1),
        }


# --- accounts and conversations -------------------------------------------------------


class Account:
    """One user logged in over HTTP, the way a browser does: it holds the session cookie."""

    def __init__(self, site_url: str, username: str):
        self.username = username
        self.http = httpx.Client(base_url=site_url, trust_env=False, timeout=120)
        page = self.http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        if token is None:
            raise RuntimeError("the login page has no CSRF token")
        response = self.http.post(
            "/accounts/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token[1]},
        )
        if response.status_code != 302 or "sessionid" not in self.http.cookies:
            raise RuntimeError(f"could not log in as {username} ({response.status_code})")

    @property
    def cookie(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.http.cookies.items())

    def new_conversation(self) -> str:
        """Create a conversation and return its socket's path, from the page's ws-connect."""
        created = self.http.post("/c/new/", headers={"X-CSRFToken": self.http.cookies["csrftoken"]})
        if created.status_code != 302:
            raise RuntimeError(f"POST /c/new/ answered {created.status_code}")
        page = self.http.get(created.headers["location"])
        found = WS_CONNECT.search(page.text)
        if found is None:
            raise RuntimeError(f"no ws-connect on {created.headers['location']}")
        return found[1]

    def close(self) -> None:
        self.http.close()


def create_accounts(site: Site, count: int, prefix: str) -> list[Account]:
    names = [f"{prefix}{index:04d}" for index in range(count)]
    site.manage(
        "shell",
        "-c",
        CREATE_USERS,
        extra_env={"BENCH_USERS": ",".join(names), "BENCH_PASSWORD": PASSWORD},
    )
    return [Account(site.url, name) for name in names]


# --- running the client -----------------------------------------------------------------


def run_client(mode: str, spec: dict, tmp: Path, timeout: float, label: str = "", on_send=None):
    """Run streaming_client.py in its own process; call ``on_send()`` when its streams start."""
    spec_path, out_path = tmp / f"{mode}{label}-spec.json", tmp / f"{mode}{label}-out.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    args = [PYTHON, str(BENCH / "streaming_client.py"), mode, str(spec_path), str(out_path)]
    with open(tmp / "client.log", "ab") as log:
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            for line in process.stdout:  # until the client exits (or the timer kills it)
                if line.strip() == "sending" and on_send is not None:
                    on_send()
            process.wait()
        finally:
            timer.cancel()
    if process.returncode:
        tail = log_tail(tmp / "client.log")
        raise RuntimeError(f"the {mode} client failed ({process.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


# --- figures ----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def figures(result: dict, times: dict, rate: float, tokens: int) -> dict:
    """What the streams got, against when the upstream wrote each token (milliseconds)."""
    ttft, latency, to_upstream, to_first, lag = [], [], [], [], []
    lost = duplicated = misordered = incomplete = snapshots = frames = size = 0
    errors = collections.Counter()
    expected = list(range(1, tokens + 1))
    for stream in result["streams"]:
        written = times.get(stream["name"], {})
        sent = written.get("sent", [])
        seen, shown = stream["first_seen"], stream["shown"]
        if stream["error"]:
            errors[stream["error"]] += 1
        lost += len(set(expected) - set(shown))
        duplicated += len(shown) - len(set(shown))
        misordered += shown != sorted(shown)
        incomplete += stream["status"] != "complete" or stream["final"] != expected
        snapshots += stream["snapshots"]
        frames += stream["frames"]
        size += stream["bytes"]
        if "arrived" in written and stream["sent_at"]:
            to_upstream.append(written["arrived"] - stream["sent_at"])
        if seen and seen[0] is not None:
            to_first.append(seen[0] - stream["sent_at"])
            if sent:
                ttft.append(seen[0] - sent[0])
        latency += [at - left for at, left in zip(seen, sent, strict=False) if at is not None]
        if sent and rate > 0:
            lag += [left - (sent[0] + index / rate) for index, left in enumerate(sent)]
    starts = [s["sent_at"] for s in result["streams"] if s["sent_at"]]
    ends = [s["last_frame_at"] for s in result["streams"] if s["last_frame_at"]]
    seconds = max(ends) - min(starts) if starts and ends else 0.0

    def ms(values, p):
        value = percentile(values, p)
        return None if value is None else value * 1000

    return {
        "streams": len(result["streams"]),
        "ttft_added_p50_ms": ms(ttft, 50),
        "ttft_added_p99_ms": ms(ttft, 99),
        "token_latency_p50_ms": ms(latency, 50),
        "token_latency_p99_ms": ms(latency, 99),
        "token_latency_max_ms": ms(latency, 100),
        "send_to_upstream_p50_ms": ms(to_upstream, 50),
        "send_to_upstream_p99_ms": ms(to_upstream, 99),
        "send_to_first_token_p50_ms": ms(to_first, 50),
        "send_to_first_token_p99_ms": ms(to_first, 99),
        "upstream_lag_p99_ms": ms(lag, 99),
        "tokens_expected": tokens * len(result["streams"]),
        "tokens_lost": lost,
        "tokens_duplicated": duplicated,
        "streams_misordered": misordered,
        "replies_incomplete": incomplete,
        "snapshots": snapshots,
        "frames": frames,
        "frames_per_second": frames / seconds if seconds else None,
        "megabytes": size / MB,
        "seconds": seconds,
        "client_cpu_seconds": result["cpu_seconds"],
        "errors": dict(errors.most_common(5)),
    }


# --- phases -----------------------------------------------------------------------------


class Bench:
    """The measurements, against one upstream and a Daphne started for each."""

    def __init__(self, args, tmp: Path, upstream: Upstream, site_env: dict):
        self.args = args
        self.tmp = tmp
        self.upstream = upstream
        self.site_env = site_env
        self.run_id = datetime.now().strftime("%H%M%S")

    def start_site(self) -> tuple[Site, Sampler]:
        if self.args.processes > 1:
            site = ProxiedSite(self.tmp, self.site_env, self.args.processes).start()
        else:
            site = Site(self.tmp, self.site_env).start()
        sampler = Sampler({"daphne": site.pids, "upstream": self.upstream.process.pid})
        sampler.start()
        return site, sampler

    def streaming(self, site: Site, sampler: Sampler, levels: list[int]) -> list[dict]:
        args = self.args
        users = min(args.users, max(levels))
        started = time.monotonic()
        accounts = create_accounts(site, users, f"bench{self.run_id}-")
        print(f"logged in {users} users over HTTP in {time.monotonic() - started:.1f} s")
        self.one_level(site, sampler, accounts, 1, "warmup", direct=False)  # load everything once
        results = []
        for level in levels:
            print(f"\n{level} streams ...", flush=True)
            results.append(self.one_level(site, sampler, accounts, level, f"n{level}"))
            print_level(results[-1], args)
        for account in accounts:
            account.close()
        return results

    def one_level(self, site, sampler, accounts, level: int, label: str, direct=True) -> dict:
        args, upstream = self.args, self.upstream
        timeout = args.tokens / args.rate + 30 + level * 0.2 if args.rate else 60 + level * 0.2
        names = [f"bench-{self.run_id}-{label}-{index:04d}" for index in range(level)]
        streams = []
        for index, name in enumerate(names):
            account = accounts[index % len(accounts)]
            streams.append(
                {"name": name, "cookie": account.cookie, "path": account.new_conversation()}
            )

        upstream.reset()
        spec = {"url": site.url, "tokens": args.tokens, "timeout": timeout, "streams": streams}
        spec["keep"] = args.keep  # raw frames in the client's output, in the kept folder
        profiles = []

        def on_send():
            if args.profile and level == max(args.levels):
                profile = self.start_profile(site, label)
                if profile is not None:
                    profiles.append(profile)

        result = run_client("site", spec, self.tmp, timeout + 120, f"-{label}", on_send)
        for profile in profiles:
            self.finish_profile(*profile)
        times = upstream.times()
        (self.tmp / f"times-{label}.json").write_text(json.dumps(times))
        figures_site = figures(result, times, args.rate, args.tokens)
        figures_site["daphne"] = sampler.window("daphne", result["started"], result["ended"])
        figures_site["upstream"] = sampler.window("upstream", result["started"], result["ended"])
        time.sleep(0.5)  # let the last replies' cleanup finish before the next phase
        outcome = {"streams": level, "site": figures_site}
        if direct:
            upstream.reset()
            spec = {
                "base_url": upstream.base_url,
                "model": "bench",
                "tokens": args.tokens,
                "timeout": timeout,
                "streams": [{"name": name.replace(f"-{label}-", f"-{label}d-")} for name in names],
            }
            result = run_client("direct", spec, self.tmp, timeout + 120, f"-{label}")
            outcome["direct"] = figures(result, upstream.times(), args.rate, args.tokens)
            outcome["direct"]["upstream"] = sampler.window(
                "upstream", result["started"], result["ended"]
            )
            time.sleep(0.5)
        return outcome

    def start_profile(self, site: Site, label: str):
        """py-spy on Daphne while the streams run, in its raw (collapsed stacks) format."""
        if shutil.which(PY_SPY) is None:
            print("--profile needs py-spy: .venv/bin/pip install py-spy")
            return None
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"streaming-{self.run_id}-{label}-profile.txt"
        seconds = max(3, int(self.args.tokens / max(self.args.rate, 1)) + 3)
        process = subprocess.Popen(
            [
                *(PY_SPY, "record", "--pid", str(site.process.pid)),
                *("--rate", "200", "--duration", str(seconds), "--format", "raw"),
                *("--nonblocking", "-o", str(path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return process, path

    def finish_profile(self, process: subprocess.Popen, path: Path) -> None:
        try:
            _, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            return
        if not path.exists():
            print(f"py-spy wrote no profile: {stderr.decode(errors='replace')[-500:]}")
            return
        print_profile(path)

    def idle(self, site: Site, sampler: Sampler, count: int) -> dict:
        args = self.args
        users = min(args.users, 5)
        accounts = create_accounts(site, users, f"idle{self.run_id}-")
        targets = [
            {"cookie": account.cookie, "path": account.new_conversation()}
            for account in accounts
            for _ in range(10)
        ]
        time.sleep(1)  # a quiet second for the RSS before
        spec = {
            "url": site.url,
            "count": count,
            "hold": args.hold,
            "probes": 10,
            "targets": targets,
        }
        print(f"\nopening {count} idle websockets ...", flush=True)
        result = run_client("idle", spec, self.tmp, args.hold + 120 + count / 20)
        before = sampler.window("daphne", result["started"] - 0.5, result["started"])
        held = sampler.window("daphne", result["connected"], result["held"])
        connecting = sampler.window("daphne", result["started"], result["connected"])
        for account in accounts:
            account.close()
        rss_before, rss_held = before["rss_start_mb"], held["rss_peak_mb"]
        opened = result["open_at_end"]
        return {
            "sockets": count,
            "opened": result["opened"],
            "open_at_end": opened,
            "errors": result["errors"],
            "connect_seconds": result["connected"] - result["started"],
            "connect_cpu_seconds": connecting["cpu_seconds"],
            "rss_before_mb": rss_before,
            "rss_with_sockets_mb": rss_held,
            "kb_per_socket": (rss_held - rss_before) * 1024 / opened if opened else None,
            "open_files_peak": held["open_files_peak"],
            "probe_p50_ms": percentile(result["probe_ms"], 50),
            "probe_max_ms": percentile(result["probe_ms"], 100),
        }


# --- report -----------------------------------------------------------------------------


def number(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def ratio(site, direct) -> str:
    if site is None or direct is None or direct <= 0:
        return ""
    return f"{site / direct:.1f}x"


def level_targets(level: dict, args) -> dict[str, tuple[str, bool]]:
    """Row name -> (target text, met) for the issue's targets that apply to this level."""
    site, streams = level["site"], level["streams"]
    targets = {}
    exact = site["tokens_lost"] == 0 and site["tokens_duplicated"] == 0
    targets["tokens lost / duplicated"] = ("0 / 0", exact and site["replies_incomplete"] == 0)
    if streams == 1:
        value = site["ttft_added_p50_ms"]
        met = value is not None and value <= TTFT_P50_ONE_STREAM_MS
        targets["added time to first token p50 (ms)"] = (f"<= {TTFT_P50_ONE_STREAM_MS}", met)
    if streams == 100:
        value = site["ttft_added_p99_ms"]
        met = value is not None and value <= TTFT_P99_100_STREAMS_MS
        targets["added time to first token p99 (ms)"] = (f"<= {TTFT_P99_100_STREAMS_MS}", met)
    if streams >= 200 and args.rate >= 100:
        value = site["token_latency_p99_ms"]
        met = value is not None and value <= DELTA_P99_200_STREAMS_MS
        targets["token latency p99 (ms)"] = (f"<= {DELTA_P99_200_STREAMS_MS}", met)
    return targets


def level_rows(level: dict) -> list[tuple[str, str, str, str]]:
    site, direct = level["site"], level.get("direct") or {}
    daphne, upstream_site = site["daphne"], site["upstream"]
    upstream_direct = direct.get("upstream") or {}
    rows = []
    for label, key in [
        ("added time to first token p50 (ms)", "ttft_added_p50_ms"),
        ("added time to first token p99 (ms)", "ttft_added_p99_ms"),
        ("token latency p50 (ms)", "token_latency_p50_ms"),
        ("token latency p99 (ms)", "token_latency_p99_ms"),
        ("token latency max (ms)", "token_latency_max_ms"),
        ("send -> upstream request p50 (ms)", "send_to_upstream_p50_ms"),
        ("send -> upstream request p99 (ms)", "send_to_upstream_p99_ms"),
        ("send -> first token p99 (ms)", "send_to_first_token_p99_ms"),
        ("frames per second, all streams", "frames_per_second"),
    ]:
        value, limit = site.get(key), direct.get(key)
        rows.append((label, number(value), number(limit), ratio(value, limit)))
    rows.append(
        (
            "tokens lost / duplicated",
            f"{site['tokens_lost']} / {site['tokens_duplicated']}",
            f"{direct.get('tokens_lost', '-')} / {direct.get('tokens_duplicated', '-')}",
            "",
        )
    )
    complete = site["streams"] - site["replies_incomplete"]
    complete_direct = direct.get("streams", 0) - direct.get("replies_incomplete", 0)
    rows.append(
        (
            "replies complete, every token once",
            f"{complete}/{site['streams']}",
            f"{complete_direct}/{direct.get('streams', '-')}",
            "",
        )
    )
    rows.append(
        ("megabytes received", number(site["megabytes"], 2), number(direct.get("megabytes"), 2), "")
    )
    cpu, seconds = daphne.get("cpu_seconds"), daphne.get("seconds")
    rows.append(("Daphne CPU seconds", number(cpu, 2), "", ""))
    share = cpu / seconds * 100 if cpu is not None and seconds else None
    rows.append(("Daphne CPU, % of one core", number(share, 0), "", ""))
    rows.append(("Daphne RSS peak (MB)", number(daphne.get("rss_peak_mb")), "", ""))
    rows.append(
        (
            "upstream CPU seconds",
            number(upstream_site.get("cpu_seconds"), 2),
            number(upstream_direct.get("cpu_seconds"), 2),
            "",
        )
    )
    rows.append(
        (
            "client CPU seconds",
            number(site["client_cpu_seconds"], 2),
            number(direct.get("client_cpu_seconds"), 2),
            "",
        )
    )
    rows.append(
        (
            "upstream pacing lag p99 (ms)",
            number(site["upstream_lag_p99_ms"]),
            number(direct.get("upstream_lag_p99_ms")),
            "",
        )
    )
    return rows


def print_table(title: str, header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for index, row in enumerate([header, *rows]):
        cells = [
            str(cell).ljust(widths[0]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        print("  " + "   ".join(cells).rstrip())
        if index == 0:
            print("  " + "   ".join("-" * width for width in widths))


def print_level(level: dict, args) -> None:
    targets = level_targets(level, args)
    rows = []
    for label, site, direct, rate in level_rows(level):
        target, met = targets.get(label, ("", None))
        verdict = "" if met is None else ("met" if met else "NOT MET")
        rows.append((label, site, direct, rate, target, verdict))
    title = (
        f"{level['streams']} concurrent stream(s), {args.tokens} tokens each at "
        f"{args.rate:g} tokens/s"
    )
    print_table(title, ("", "site", "direct", "site/direct", "target", ""), rows)
    errors = {**level["site"]["errors"], **(level.get("direct") or {}).get("errors", {})}
    for error, count in errors.items():
        print(f"  ! {count} stream(s): {error}")
    if level["site"]["snapshots"]:
        print(f"  ! {level['site']['snapshots']} snapshot(s) were needed (a frame was skipped)")


def print_profile(path: Path, top: int = 15) -> None:
    """The functions Daphne spent its samples in (py-spy's raw format: stack;stack count)."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"\nprofile of Daphne: {total} samples, written to {path}")
    print("  own time:")
    for frame, count in own.most_common(top):
        print(f"    {count / total:6.1%}  {frame}")
    print("  with callees, the project's functions:")
    shown = [
        (f, c) for f, c in inclusive.most_common() if "conversations/" in f or "chatsite/" in f
    ]
    for frame, count in shown[:top]:
        print(f"    {count / total:6.1%}  {frame}")


def machine() -> dict:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def print_load(when: str) -> None:
    one, five, fifteen = os.getloadavg()
    cpus = len(os.sched_getaffinity(0))
    print(f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} on {cpus} CPUs (nproc)")


def targets_summary(results: dict, args) -> list[dict]:
    summary = []
    for level in results.get("levels", []):
        for label, (target, met) in level_targets(level, args).items():
            name = f"{level['streams']} stream(s): {label} {target}"
            summary.append({"target": name, "met": met})
    statements = results.get("statements")
    if statements:
        counts = {length: value["statements"] for length, value in statements.items()}
        summary.append(
            {
                "target": "database statements per reply constant "
                + ", ".join(f"{n} at {length} tokens" for length, n in counts.items()),
                "met": len(set(counts.values())) == 1,
            }
        )
    idle = results.get("idle")
    if idle:
        rss = idle["rss_with_sockets_mb"]
        scaled = (
            rss is not None
            and idle["sockets"] >= IDLE_SOCKETS
            and idle["open_at_end"] >= IDLE_SOCKETS
        )
        summary.append(
            {
                "target": f"{IDLE_SOCKETS:,} idle sockets under {IDLE_RSS_MB} MB RSS "
                f"({idle['open_at_end']:,} open, {number(rss)} MB)",
                "met": scaled and rss < IDLE_RSS_MB,
            }
        )
    return summary


# --- main -------------------------------------------------------------------------------


def throwaway_postgres(server_url: str) -> tuple[str, Callable[[], None]]:
    """Create a database of our own on ``server_url``; return its URL and how to drop it."""
    import psycopg

    name = f"bench_streaming_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}")), drop


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure how the site delivers streamed replies (see bench/README.md)."
    )
    parser.add_argument("--streams", help="concurrency levels, e.g. 1,100,200 (the default)")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens per second per reply")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--paragraph", type=int, default=50, help="tokens per Markdown paragraph")
    parser.add_argument(
        "--users", type=int, default=20, help="users the streams share round-robin (default 20)"
    )
    parser.add_argument(
        "--idle-sockets",
        type=int,
        default=0,
        metavar="N",
        help="hold N idle websockets open on one Daphne and print its RSS",
    )
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to hold idle sockets")
    parser.add_argument(
        "--statements",
        default="50,2000",
        help="reply lengths whose database statements are counted ('' to skip)",
    )
    parser.add_argument(
        "--postgres",
        nargs="?",
        const="postgres://postgres@127.0.0.1:5432/postgres",
        metavar="URL",
        help="use a throwaway database on this PostgreSQL server",
    )
    parser.add_argument(
        "--redis",
        nargs="?",
        const="redis://127.0.0.1:6379/15",
        metavar="URL",
        help="use the Redis channel layer at this URL",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="N Daphne processes behind nginx (needs --redis; CPU and RSS are their sums)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="record Daphne with py-spy during the largest level"
    )
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, raw client output)"
    )
    args = parser.parse_args(argv)
    if args.streams is None:
        args.streams = "" if args.idle_sockets else "1,100,200"
    args.levels = [int(n) for n in args.streams.split(",") if n.strip()]
    if any(n < 1 for n in args.levels) or args.tokens < 1 or args.rate < 0 or args.users < 1:
        parser.error("streams, tokens and users must be positive, rate not negative")
    if args.processes > 1 and not args.redis:
        parser.error("--processes needs --redis: the processes share the Redis channel layer")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS / f"streaming-{stamp}.json"
    results: dict = {
        "machine_before": machine(),
        "arguments": vars(args) | {"json": str(json_path)},
    }
    print_load("before")
    print(
        f"Python {platform.python_version()}, {'PostgreSQL' if args.postgres else 'SQLite'}, "
        f"{'Redis' if args.redis else 'in-memory'} channel layer, "
        f"{args.processes} Daphne process(es){' behind nginx' if args.processes > 1 else ''}, "
        "CHAT_FLUSH_INTERVAL_PER_REPLY="
        f"{os.environ.get('CHAT_FLUSH_INTERVAL_PER_REPLY') or '0.0005 (default)'}"
    )

    drop_database = None
    upstream = None
    with tempfile.TemporaryDirectory(prefix="bench-streaming-", delete=not args.keep) as tmp_name:
        tmp = Path(tmp_name)
        if args.keep:
            print(f"keeping {tmp}")
        try:
            if args.postgres:
                database_url, drop_database = throwaway_postgres(args.postgres)
            else:
                database_url = f"sqlite:///{tmp / 'site.sqlite3'}"
            upstream = Upstream(tmp, args.rate, args.tokens, args.paragraph)
            site_env = {
                "DATABASE_URL": database_url,
                "OPENAI_BASE_URL": upstream.base_url,
                "REDIS_URL": args.redis or "",
                "CHANNEL_LAYER_PREFIX": f"bench-streaming-{os.getpid()}",  # apart from others
            }
            bench = Bench(args, tmp, upstream, site_env)
            Site(tmp, site_env).manage("migrate", "--noinput")

            if args.idle_sockets:
                site, sampler = bench.start_site()
                try:
                    results["idle"] = bench.idle(site, sampler, args.idle_sockets)
                finally:
                    sampler.stop()
                    site.stop()
                print_idle(results["idle"])

            if args.levels:
                site, sampler = bench.start_site()
                try:
                    results["levels"] = bench.streaming(site, sampler, args.levels)
                finally:
                    sampler.stop()
                    site.stop()

            lengths = [n for n in args.statements.split(",") if n.strip()]
            if lengths:
                results["statements"] = count_statements(lengths, site_env)
                print_statements(results["statements"])
        except Exception:
            for name in ("daphne.log", "upstream.log"):
                if tail := log_tail(tmp / name):
                    print(f"\n--- last lines of {name} ---\n{tail}", file=sys.stderr)
            raise
        finally:
            if upstream is not None:
                upstream.stop()
            if drop_database is not None:
                drop_database()

    results["targets"] = targets_summary(results, args)
    print("\ntargets (from the issue):")
    for target in results["targets"]:
        print(f"  {'met    ' if target['met'] else 'NOT MET'}  {target['target']}")
    results["machine_after"] = machine()
    print_load("after")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    print(f"results written to {json_path}")


def count_statements(lengths: list[str], site_env: dict) -> dict:
    done = subprocess.run(
        [PYTHON, str(BENCH / "streaming_statements.py"), *lengths],
        cwd=ROOT,
        env={**os.environ, **site_env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"counting statements failed:\n{done.stdout}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_statements(statements: dict) -> None:
    rows = [
        (f"{length} tokens", value["statements"], number(value["seconds"] * 1000))
        for length, value in statements.items()
    ]
    print_table("database statements per reply (in-process)", ("reply", "statements", "ms"), rows)
    for length, value in statements.items():
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(value["kinds"].items()))
        print(f"  {length} tokens: {kinds}")


def print_idle(idle: dict) -> None:
    rows = [
        (
            "sockets opened / still open after the hold",
            f"{idle['opened']:,} / {idle['open_at_end']:,}",
        ),
        ("seconds to open them all", number(idle["connect_seconds"])),
        ("Daphne CPU seconds while they opened", number(idle["connect_cpu_seconds"], 2)),
        ("Daphne RSS before (MB)", number(idle["rss_before_mb"])),
        ("Daphne RSS with the sockets open (MB)", number(idle["rss_with_sockets_mb"])),
        ("per socket (KB)", number(idle["kb_per_socket"])),
        ("Daphne open files, peak", number(idle["open_files_peak"])),
        (
            "round trip on an open socket, p50 / max (ms)",
            f"{number(idle['probe_p50_ms'])} / {number(idle['probe_max_ms'])}",
        ),
    ]
    print_table(f"{idle['sockets']:,} idle websockets on one Daphne process", ("", ""), rows)
    for error, count in idle["errors"].items():
        print(f"  ! {count} socket(s): {error}")


if __name__ == "__main__":
    main()
