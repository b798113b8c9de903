"""How fast the site delivers streamed replies, beside what the wire alone allows: the bench
upstream, Daphne and the websocket client each in a process of their own (bench/README.md).

    .venv/bin/python bench/streaming.py [--streams 1,100,200] [--idle-sockets 5000] [--redis]
"""

import argparse
import os
import platform
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import common
from common import number, percentile

# The targets: row -> (the stream counts it applies to, figure, limit).
TARGETS = {
    "added time to first token p50 (ms)": (lambda n: n == 1, "ttft_added_p50_ms", 5),
    "added time to first token p99 (ms)": (lambda n: n == 100, "ttft_added_p99_ms", 50),
    "token latency p99 (ms)": (lambda n: n >= 200, "token_latency_p99_ms", 200),  # at 100/s
}
IDLE_SOCKETS, IDLE_RSS_MB = 5000, 500

LEVEL_ROWS = [  # label, figure, digits, with the site / direct ratio
    ("added time to first token p50 (ms)", "ttft_added_p50_ms", 1, True),
    ("added time to first token p99 (ms)", "ttft_added_p99_ms", 1, True),
    ("token latency p50 (ms)", "token_latency_p50_ms", 1, True),
    ("token latency p99 (ms)", "token_latency_p99_ms", 1, True),
    ("token latency max (ms)", "token_latency_max_ms", 1, True),
    ("send -> upstream request p50 (ms)", "send_to_upstream_p50_ms", 1, True),
    ("send -> upstream request p99 (ms)", "send_to_upstream_p99_ms", 1, True),
    ("send -> first token p99 (ms)", "send_to_first_token_p99_ms", 1, True),
    ("frames per second, all streams", "frames_per_second", 1, True),
    ("tokens lost / duplicated", "lost_duplicated", 1, False),
    ("replies complete, every token once", "complete", 1, False),
    ("megabytes received", "megabytes", 2, False),
    ("Daphne CPU seconds", "daphne_cpu_seconds", 2, False),
    ("Daphne CPU, % of one core", "daphne_cpu_percent", 0, False),
    ("Daphne RSS peak (MB)", "daphne_rss_peak_mb", 1, False),
    ("upstream CPU seconds", "upstream_cpu_seconds", 2, False),
    ("client CPU seconds", "client_cpu_seconds", 2, False),
    ("upstream pacing lag p99 (ms)", "upstream_lag_p99_ms", 1, False),
]
IDLE_ROWS = [  # label, figure, digits
    ("sockets opened / still open after the hold", "opened_open", 0),
    ("seconds to open them all", "connect_seconds", 1),
    ("Daphne CPU seconds while they opened", "connect_cpu_seconds", 2),
    ("Daphne RSS before (MB)", "rss_before_mb", 1),
    ("Daphne RSS with the sockets open (MB)", "rss_with_sockets_mb", 1),
    ("per socket (KB)", "kb_per_socket", 1),
    ("Daphne open files, peak", "open_files_peak", 0),
    ("round trip on an open socket, p50 / max (ms)", "probe_ms", 1),
]


class Bench:
    """The measurements, against one upstream and a Daphne (or several) started for each."""

    def __init__(self, args, tmp: Path, upstream: common.Upstream, site_env: dict):
        self.args, self.tmp, self.upstream, self.site_env = args, tmp, upstream, site_env
        self.run_id = datetime.now().strftime("%H%M%S")

    def with_site(self, phase, *phase_args):
        site = common.Site(self.tmp, self.site_env, self.args.processes).start()
        sampler = common.Sampler({"daphne": site.pids, "upstream": [self.upstream.process.pid]})
        sampler.start()
        try:
            return phase(site, sampler, *phase_args)
        finally:
            sampler.stop()
            site.stop()

    def streaming(self, site: common.Site, sampler, levels: list[int]) -> list[dict]:
        started, users = time.monotonic(), min(self.args.users, max(levels))
        accounts = common.create_accounts(site, users, f"bench{self.run_id}-")
        print(f"logged in {users} users over HTTP in {time.monotonic() - started:.1f} s")
        self.site_level(site, sampler, accounts, 1, "warmup")  # load everything once
        results = []
        for level in levels:
            print(f"\n{level} streams ...", flush=True)
            outcome = {"streams": level, "site": self.site_level(site, sampler, accounts, level)}
            outcome["direct"] = self.direct_level(sampler, level)
            print_level(outcome, self.args)
            results.append(outcome)
        for account in accounts:
            account.close()
        return results

    def timeout(self, level: int) -> float:
        return (self.args.tokens / self.args.rate + 30 if self.args.rate else 60) + level * 0.2

    def site_level(self, site, sampler, accounts, level: int, label: str = "") -> dict:
        args, label, streams = self.args, label or f"n{level}", []
        for index in range(level):
            account = accounts[index % len(accounts)]
            name = f"bench-{self.run_id}-{label}-{index:04d}"
            streams.append({"name": name, "cookie": account.cookie})
            streams[-1]["path"] = account.new_conversation()
        self.upstream.reset()
        spec = {"url": site.url, "tokens": args.tokens, "timeout": self.timeout(level)}
        spec["streams"] = streams
        result = common.run_client("site", spec, self.tmp, spec["timeout"] + 120, f"-{label}")
        outcome = common.figures(result, self.upstream.times(), args.rate, args.tokens)
        window = (result["started"], result["ended"])
        daphne, upstream = sampler.window("daphne", *window), sampler.window("upstream", *window)
        cpu, seconds = daphne["cpu_seconds"], daphne.get("seconds")
        outcome |= {"daphne": daphne, "upstream": upstream, "daphne_cpu_seconds": cpu}
        outcome["daphne_cpu_percent"] = cpu / seconds * 100 if cpu is not None and seconds else None
        time.sleep(0.5)  # let the last replies' cleanup finish before the next phase
        return derived(outcome) | {"daphne_rss_peak_mb": daphne["rss_peak_mb"]}

    def direct_level(self, sampler, level: int) -> dict:
        args = self.args
        self.upstream.reset()
        names = [f"bench-{self.run_id}-n{level}d-{index:04d}" for index in range(level)]
        spec = {"base_url": self.upstream.base_url, "model": "bench", "tokens": args.tokens}
        spec |= {"timeout": self.timeout(level), "streams": [{"name": n} for n in names]}
        result = common.run_client("direct", spec, self.tmp, spec["timeout"] + 120, f"-n{level}")
        outcome = common.figures(result, self.upstream.times(), args.rate, args.tokens)
        outcome["upstream"] = sampler.window("upstream", result["started"], result["ended"])
        time.sleep(0.5)
        return derived(outcome)

    def idle(self, site: common.Site, sampler, count: int) -> dict:
        accounts = common.create_accounts(site, min(self.args.users, 5), f"idle{self.run_id}-")
        targets = [{"cookie": a.cookie, "path": a.new_conversation()} for a in accounts * 10]
        time.sleep(1)  # a quiet second for the RSS before
        spec = {"url": site.url, "count": count, "hold": self.args.hold, "probes": 10}
        print(f"\nopening {count} idle websockets ...", flush=True)
        spec["targets"], timeout = targets, self.args.hold + 120 + count / 20
        result = common.run_client("idle", spec, self.tmp, timeout)
        for account in accounts:
            account.close()
        start, connected, opened = result["started"], result["connected"], result["open_at_end"]
        before = sampler.window("daphne", start - 0.5, start)["rss_start_mb"]
        holding = sampler.window("daphne", connected, result["held"])
        rss, probes = holding["rss_peak_mb"], result["probe_ms"]
        out = {"sockets": count, "opened": result["opened"], "open_at_end": opened}
        out |= {"opened_open": f"{result['opened']:,} / {opened:,}", "errors": result["errors"]}
        out["connect_seconds"] = connected - start
        out["connect_cpu_seconds"] = sampler.window("daphne", start, connected)["cpu_seconds"]
        out |= {"rss_before_mb": before, "rss_with_sockets_mb": rss}
        out["kb_per_socket"] = (rss - before) * 1024 / opened if opened else None
        out["open_files_peak"] = holding["open_files_peak"]
        out |= {"probe_p50_ms": percentile(probes, 50), "probe_max_ms": percentile(probes, 100)}
        return out | {"probe_ms": f"{number(out['probe_p50_ms'])} / {number(out['probe_max_ms'])}"}


def derived(out: dict) -> dict:
    """The figures of a level's table that are not numbers: tokens lost, replies complete."""
    out["lost_duplicated"] = f"{out['tokens_lost']} / {out['tokens_duplicated']}"
    out["complete"] = f"{out['streams'] - out['replies_incomplete']}/{out['streams']}"
    return out | {"upstream_cpu_seconds": out["upstream"]["cpu_seconds"]}


def level_targets(level: dict, args) -> dict[str, tuple[str, bool]]:
    """Row -> (target, met) for the issue's targets that apply to this level."""
    site = level["site"]
    exact = site["tokens_lost"] == site["tokens_duplicated"] == site["replies_incomplete"] == 0
    targets = {"tokens lost / duplicated": ("0 / 0", exact)}
    for row, (applies, key, limit) in TARGETS.items():
        if applies(level["streams"]) and (key != "token_latency_p99_ms" or args.rate >= 100):
            targets[row] = (f"<= {limit}", site[key] is not None and site[key] <= limit)
    return targets


def print_level(level: dict, args) -> None:
    site, direct, targets, rows = level["site"], level["direct"], level_targets(level, args), []
    for label, key, digits, compared in LEVEL_ROWS:
        cells = [number(side[key], digits) if key in side else "" for side in (site, direct)]
        value, limit = site.get(key), direct.get(key)
        ratio = f"{value / limit:.1f}x" if compared and value is not None and limit else ""
        target, met = targets.get(label, ("", None))
        verdict = "" if met is None else ("met" if met else "NOT MET")
        rows.append((label, *cells, ratio, target, verdict))
    title = f"{level['streams']} concurrent stream(s), {args.tokens} tokens each at {args.rate:g}"
    header = ("", "site", "direct", "site/direct", "target", "")
    common.print_table(f"{title} tokens/s", header, rows)
    for error, count in (site["errors"] | direct["errors"]).items():
        print(f"  ! {count} stream(s): {error}")
    if site["snapshots"]:
        print(f"  ! {site['snapshots']} snapshot(s) were needed (a frame was skipped)")


def targets_summary(results: dict, args) -> dict[str, bool]:
    summary = {
        f"{level['streams']} stream(s): {label} {target}": met
        for level in results.get("levels", [])
        for label, (target, met) in level_targets(level, args).items()
    }
    if idle := results.get("idle"):
        rss, opened = idle["rss_with_sockets_mb"], idle["open_at_end"]
        met = rss is not None and min(idle["sockets"], opened) >= IDLE_SOCKETS and rss < IDLE_RSS_MB
        text = f"{IDLE_SOCKETS:,} idle sockets under {IDLE_RSS_MB} MB RSS"
        summary[f"{text} ({opened:,} open, {number(rss)} MB)"] = met
    return summary


def throwaway_postgres(server_url: str, stack: ExitStack) -> str:
    """Create a database of our own on ``server_url``, dropped at the end; return its URL."""
    import psycopg

    name = f"bench_streaming_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Measure streamed replies (bench/README.md).")
    add = parser.add_argument
    add("--streams", help="concurrency levels, e.g. 1,100,200 (the default)")
    add("--rate", type=float, default=100.0, help="tokens per second per reply")
    add("--tokens", type=int, default=200, help="tokens per reply")
    add("--paragraph", type=int, default=50, help="tokens per Markdown paragraph")
    add("--users", type=int, default=20, help="users the streams share round-robin")
    add("--idle-sockets", type=int, default=0, metavar="N", help="hold N idle websockets open")
    add("--hold", type=float, default=10.0, help="seconds to hold idle sockets")
    postgres, redis = "postgres://postgres@127.0.0.1:5432/postgres", "redis://127.0.0.1:6379/15"
    add("--postgres", nargs="?", const=postgres, metavar="URL", help="a throwaway database there")
    add("--redis", nargs="?", const=redis, metavar="URL", help="the Redis channel layer there")
    add("--processes", type=int, default=1, metavar="N", help="N Daphnes behind nginx (--redis)")
    args = parser.parse_args(argv)
    if args.streams is None:
        args.streams = "" if args.idle_sockets else "1,100,200"
    args.levels = [int(n) for n in args.streams.split(",") if n.strip()]
    if any(n < 1 for n in args.levels) or args.tokens < 1 or args.rate < 0 or args.users < 1:
        parser.error("streams, tokens and users must be positive, rate not negative")
    if args.processes > 1 and not args.redis:
        parser.error("--processes needs --redis: the processes share the Redis channel layer")
    return args


def run(args, tmp: Path, stack: ExitStack) -> dict:
    """The phases: idle sockets, then the streaming levels."""
    database = throwaway_postgres(args.postgres, stack) if args.postgres else ""
    redis = args.redis or ""
    upstream, site_env = common.upstream_and_site(tmp, stack, args, database, REDIS_URL=redis)
    bench, results = Bench(args, tmp, upstream, site_env), {}
    if args.idle_sockets:
        results["idle"] = idle = bench.with_site(bench.idle, args.idle_sockets)
        rows = [(label, number(idle[key], digits)) for label, key, digits in IDLE_ROWS]
        title = f"{idle['sockets']:,} idle websockets on one Daphne process"
        common.print_table(title, ("", ""), rows)
        for error, count in idle["errors"].items():
            print(f"  ! {count} socket(s): {error}")
    if args.levels:
        results["levels"] = bench.with_site(bench.streaming, args.levels)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    common.print_load("before")
    nginx = " behind nginx" if args.processes > 1 else ""
    print(
        f"Python {platform.python_version()}, {'PostgreSQL' if args.postgres else 'SQLite'}, "
        f"{'Redis' if args.redis else 'in-memory'} channel layer, {args.processes} Daphne "
        f"process(es){nginx}, CHAT_FLUSH_INTERVAL_PER_REPLY="
        f"{os.environ.get('CHAT_FLUSH_INTERVAL_PER_REPLY') or '0.0005 (default)'}"
    )
    with common.workspace("bench-streaming-") as (tmp, stack):
        results = run(args, tmp, stack)
    common.print_targets(targets_summary(results, args))


if __name__ == "__main__":
    main()
