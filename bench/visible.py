"""What a person sees: from the upstream writing a token to that token showing in Chromium.

    .venv/bin/python bench/visible.py                          # 2,000 tokens at 200/s, 3 runs
    .venv/bin/python bench/visible.py --tokens 500 --rate 100 --runs 5 --json visible.json
    CHAT_FLUSH_MIN_INTERVAL=0 .venv/bin/python bench/visible.py   # the site's env passes through

Starts the bench upstream (streaming_upstream.py: numbered tokens ``w000001
w000002 ...``, a blank line every ``--paragraph`` tokens, the time each token
was written) and the site under Daphne, each in its own process on 127.0.0.1,
as bench/streaming.py does. Then, per run, in a fresh context of headless
Chromium (Debian's, driven by Playwright as the browser tests do): log in,
"New conversation", wait for the socket, and inject a MutationObserver on
``#messages`` that stamps the first time each token number is in the
assistant's message (``performance.timeOrigin + performance.now()``, epoch
milliseconds). Its callback runs as a microtask right after htmx's swap (and
chat.js's scroll) in the same task, before the page is painted: that is the
token's first appearance in the page. The page also stamps every frame's
arrival (``htmx:wsBeforeMessage``), the end of its swap (``htmx:wsAfterMessage``)
and the next animation frame after each new token (when it can be painted at
the earliest), so the latency splits into its parts.

Send the message by the composer and Enter, wait for the final element, then
set each token's stamp against the upstream's CLOCK_MONOTONIC write time
(converted to epoch time with the median of ``time.time() - time.monotonic()``).
A last phase reads one more reply with a bare Python websocket client
(streaming_client.py), for the server's share without a browser. With
``--witness``, a bare socket also reads every measured reply beside the page,
so each token's delay splits into the server's share and the browser's.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import (
    CREATE_USERS,
    PASSWORD,
    RESULTS,
    WS_CONNECT,
    Site,
    Upstream,
    figures,
    log_tail,
    number,
    percentile,
    print_table,
    run_client,
)
from streaming_client import Received, open_socket, read_reply, summarize_site

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# The targets, and what it measured the same way elsewhere (ms).
FIRST_TOKEN_TARGET_MS = 10
P99_TARGET_MS = 30
ELSEWHERE = "Open WebUI 0.12.4: first ~65, p50 ~80, p99 ~230 (growing); bare relay: ~4 and 12"

# Before the page's own scripts: note when the socket opens and when Enter is pressed.
INIT_SCRIPT = """
document.addEventListener("htmx:wsOpen", () => { window.__wsOpenAt = performance.now(); });
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter") window.__enterAt = performance.timeOrigin + performance.now();
}, true);
"""

# Injected once the socket is open. Stamps are epoch milliseconds.
OBSERVER_SCRIPT = """
() => {
  const clock = () => performance.timeOrigin + performance.now();
  const TOKEN = /w(\\d{6})/g;
  const ASSISTANT = "[data-role=assistant]";
  const state = {
    seen: {},      // token number -> when it was first in the assistant's message
    frameOf: {},   // token number -> index of the last frame that had arrived by then
    painted: {},   // token number -> the next animation frame after it was seen
    frames: [],    // [arrived, swapped, observed, characters] per websocket frame
    callbacks: 0,
    callbackMs: 0,
    callbackMaxMs: 0,
    scanned: 0,    // characters the observer read, in all
  };
  window.__visible = state;
  let unpainted = [];

  // Capture phase on the document: before chat.js's own listeners (bubble phase).
  document.addEventListener("htmx:wsBeforeMessage", (event) => {
    state.frames.push([clock(), null, null, event.detail.message.length]);
  }, true);
  document.addEventListener("htmx:wsAfterMessage", () => {
    const frame = state.frames[state.frames.length - 1];
    if (frame) frame[1] = clock();
  }, true);

  function scan(text, now) {
    state.scanned += text.length;
    const frame = state.frames.length - 1;
    TOKEN.lastIndex = 0;
    let match;
    while ((match = TOKEN.exec(text)) !== null) {
      const n = +match[1];
      if (state.seen[n] === undefined) {
        state.seen[n] = now;
        state.frameOf[n] = frame;
        unpainted.push(n);
      }
    }
  }

  function paintedAt() {
    const now = clock();
    for (const n of unpainted) state.painted[n] = now;
    unpainted = [];
  }

  // Only what each batch added is read (the new blocks, the new tail, a replaced
  // turn), never the whole reply again: the work per frame does not grow with it.
  const observer = new MutationObserver((records) => {
    const started = performance.now();
    const now = performance.timeOrigin + started;
    const frame = state.frames[state.frames.length - 1];
    if (frame && frame[2] === null) frame[2] = now;
    const hadUnpainted = unpainted.length > 0;
    for (const record of records) {
      if (record.type === "characterData") {
        const parent = record.target.parentElement;
        if (record.target.isConnected && parent && parent.closest(ASSISTANT)) {
          scan(record.target.data, now);
        }
        continue;
      }
      for (const node of record.addedNodes) {
        if (!node.isConnected) continue;  // added and removed again in this batch
        const element = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
        if (element && element.closest(ASSISTANT)) {
          scan(node.textContent, now);
        } else if (node.nodeType === Node.ELEMENT_NODE) {
          for (const inner of node.querySelectorAll(ASSISTANT)) scan(inner.textContent, now);
        }
      }
    }
    if (unpainted.length > 0 && !hadUnpainted) requestAnimationFrame(paintedAt);
    const spent = performance.now() - started;
    state.callbacks += 1;
    state.callbackMs += spent;
    state.callbackMaxMs = Math.max(state.callbackMaxMs, spent);
  });
  observer.observe(document.getElementById("messages"), {
    subtree: true, childList: true, characterData: true,
  });
  state.stop = () => observer.disconnect();
}
"""

COLLECT_SCRIPT = """
() => {
  const state = window.__visible;
  state.stop();
  const last = [...document.querySelectorAll("[data-role=assistant]")].pop();
  return {
    seen: state.seen, frameOf: state.frameOf, painted: state.painted, frames: state.frames,
    callbacks: state.callbacks, callbackMs: state.callbackMs,
    callbackMaxMs: state.callbackMaxMs, scanned: state.scanned,
    enterAt: window.__enterAt || null,
    finalText: last ? last.textContent : "",
  };
}
"""

# The warm-up's "Stop reply", unless the reply is over already (the button is hidden then).
STOP_SCRIPT = """
() => {
  if (document.querySelector("[data-role=assistant][data-status=streaming]")) {
    document.getElementById("stop").requestSubmit();
  }
}
"""


# --- clocks -----------------------------------------------------------------------------


def epoch_offset(samples: int = 21) -> tuple[float, float]:
    """``time.time() - time.monotonic()`` (seconds): the median, and the samples' spread."""
    offsets = []
    for _ in range(samples):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        offsets.append(wall - (before + after) / 2)
    return statistics.median(offsets), max(offsets) - min(offsets)


def page_clock_error(page, samples: int = 20) -> tuple[float, float]:
    """The page's epoch clock minus this process's (ms), from the quickest round trip.

    Returns (difference, round trip): the true difference is within half the round
    trip of the figure.
    """
    best = None
    for _ in range(samples):
        before = time.time()
        value = page.evaluate("performance.timeOrigin + performance.now()")
        after = time.time()
        trip = (after - before) * 1000
        if best is None or trip < best[1]:
            best = (value - (before + after) / 2 * 1000, trip)
    return best


# --- processes' CPU ---------------------------------------------------------------------


def chromium_processes() -> dict[int, psutil.Process]:
    """Chromium's processes under this one (Playwright's driver starts the browser)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name().lower():
                found[child.pid] = child
        except psutil.Error:
            continue
    return found


def cpu_of(processes: dict[int, psutil.Process]) -> dict[int, tuple[float, bool]]:
    """pid -> (CPU seconds, is a renderer)."""
    times = {}
    for pid, process in processes.items():
        try:
            cpu = process.cpu_times()
            renderer = "--type=renderer" in " ".join(process.cmdline())
        except psutil.Error:
            continue
        times[pid] = (cpu.user + cpu.system, renderer)
    return times


def cpu_used(before: dict, after: dict) -> tuple[float, float]:
    """CPU seconds between two ``cpu_of`` readings: all processes, and renderers only."""
    total = renderers = 0.0
    for pid, (seconds, renderer) in after.items():
        used = seconds - before.get(pid, (0.0, False))[0]
        total += used
        renderers += used if renderer else 0.0
    return total, renderers


def daphne_cpu(site: Site) -> float:
    cpu = psutil.Process(site.process.pid).cpu_times()
    return cpu.user + cpu.system


class Meter:
    """CPU of Daphne and of Chromium's processes between ``start()`` and ``stop()``."""

    def __init__(self, site: Site):
        self.site = site
        self.figures: dict = {}

    def start(self) -> None:
        self._chromium = cpu_of(chromium_processes())
        self._daphne, self._started = daphne_cpu(self.site), time.monotonic()

    def stop(self) -> None:
        seconds = time.monotonic() - self._started
        daphne = daphne_cpu(self.site) - self._daphne
        chromium, renderer = cpu_used(self._chromium, cpu_of(chromium_processes()))
        self.figures = {
            "seconds": seconds,
            "daphne_cpu_percent": daphne / seconds * 100,
            "chromium_cpu_percent": chromium / seconds * 100,
            "renderer_cpu_percent": renderer / seconds * 100,
        }


# --- a bare socket beside the page (--witness) -------------------------------------------


class Witness(threading.Thread):
    """A second websocket on the page's conversation, read by Python as frames arrive.

    The same frames reach it as the page, so per token the delay splits into the
    server's share (until a bare client on this machine has it) and the browser's.
    """

    def __init__(self, url: str, path: str, cookie: str, name: str, tokens: int, seconds: float):
        super().__init__(name="witness", daemon=True)
        self.url, self.path, self.cookie = url, path, cookie
        self.tokens, self.seconds = tokens, seconds
        self.received = Received(name)
        self.connected = threading.Event()
        self.error = ""

    def run(self) -> None:
        try:
            asyncio.run(self._read())
        except Exception as error:  # reported, never raised in a thread
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self.connected.set()

    async def _read(self) -> None:
        async with open_socket(self.url, self.path, self.cookie, 30) as socket:
            self.connected.set()
            await read_reply(socket, self.received, self.seconds)

    def first_seen(self) -> list[float | None]:
        """Per token (number - 1): when the bare socket first had it (monotonic seconds)."""
        self.join(30)
        if self.error or self.received.error:
            raise RuntimeError(f"the witness socket failed: {self.error or self.received.error}")
        return summarize_site(self.received, self.tokens)["first_seen"]


# --- one reply in the browser ------------------------------------------------------------


class Browser:
    """Debian's Chromium under Playwright's sync API."""

    def __init__(self, site: Site):
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"Chromium is not installed at {CHROMIUM}")
        self.site = site
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        self.version = self.browser.version

    def logged_in_page(self, username: str):
        """A fresh context, logged in through the form; returns (context, page)."""
        context = self.browser.new_context(base_url=self.site.url)
        context.add_init_script(INIT_SCRIPT)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto("/accounts/login/")
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{self.site.url}/")
        return context, page

    def new_conversation(self, page) -> None:
        """Click "New conversation" and wait until the page's socket is open."""
        page.get_by_role("button", name="New conversation").first.click()
        page.wait_for_url("**/c/*/")
        # #connection starts hidden and is hidden again on htmx:wsOpen: the init script's
        # flag says the socket really opened.
        page.wait_for_function(
            "() => window.__wsOpenAt !== undefined"
            " && document.getElementById('connection').hidden === true"
        )

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()


def run_in_browser(
    browser: Browser,
    username: str,
    name: str,
    timeout: float,
    meter=None,
    stop_after=0,
    witness_tokens=0,
):
    """Send ``name``'s message in a fresh context; return what the page recorded.

    ``meter`` is started right before Enter and stopped when the reply is complete.
    With ``stop_after``, press "Stop reply" once that token is visible (a warm-up).
    With ``witness_tokens``, a bare socket reads the same reply (``recorded["witness_seen"]``).
    """
    context, page = browser.logged_in_page(username)
    try:
        browser.new_conversation(page)
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in context.cookies())
        witness = None
        if witness_tokens:
            path = page.get_attribute("#chat", "ws-connect")
            witness = Witness(browser.site.url, path, cookie, name, witness_tokens, timeout)
            witness.start()
            witness.connected.wait(30)
        page.evaluate(OBSERVER_SCRIPT)
        page.fill("textarea[name=content]", f"{name} go")
        if meter is not None:
            meter.start()
        page.press("textarea[name=content]", "Enter")
        if stop_after:
            page.wait_for_function(f"() => window.__visible.seen[{stop_after}] !== undefined")
            page.evaluate(STOP_SCRIPT)
            final = "[data-role=assistant]:not([data-status=streaming])"
        else:
            final = "[data-role=assistant][data-status=complete]"
        # Polled every 100 ms, not on every animation frame: the wait perturbs the page less.
        page.wait_for_function(
            f"() => document.querySelector({json.dumps(final)}) !== null",
            polling=100,
            timeout=timeout * 1000,
        )
        if meter is not None:
            meter.stop()
        recorded = page.evaluate(COLLECT_SCRIPT)
        recorded["clock_error_ms"], recorded["clock_trip_ms"] = page_clock_error(page)
        recorded["cookie"] = cookie
        recorded["witness_seen"] = witness.first_seen() if witness is not None else []
        return recorded
    finally:
        context.close()


# --- figures ----------------------------------------------------------------------------


def run_figures(recorded: dict, written: dict, offset: float, tokens: int) -> dict:
    """Per token: page stamps (epoch ms) against the upstream's writes (monotonic s)."""
    sent = [(at + offset) * 1000 for at in written.get("sent", [])]
    seen = {int(n): at for n, at in recorded["seen"].items()}
    painted = {int(n): at for n, at in recorded["painted"].items()}
    frame_of = {int(n): index for n, index in recorded["frameOf"].items()}
    frames = recorded["frames"]
    latency, to_paint, to_arrival, in_page = [], [], [], []
    bare, bare_to_page = [], []
    at_witness = recorded["witness_seen"]
    for number_, wrote in enumerate(sent, start=1):
        if number_ not in seen:
            continue
        latency.append(seen[number_] - wrote)
        if number_ <= len(at_witness) and at_witness[number_ - 1] is not None:
            reached = (at_witness[number_ - 1] + offset) * 1000
            bare.append(reached - wrote)
            if frame_of.get(number_, -1) >= 0:
                bare_to_page.append(frames[frame_of[number_]][0] - reached)
        if number_ in painted:
            to_paint.append(painted[number_] - wrote)
        index = frame_of.get(number_, -1)
        if index >= 0:
            arrived = frames[index][0]
            to_arrival.append(arrived - wrote)
            in_page.append(seen[number_] - arrived)
    missing = [n for n in range(1, tokens + 1) if n not in seen]
    tenth = max(1, len(latency) // 10)
    swap = [f[1] - f[0] for f in frames if f[1] is not None]
    after_swap = [f[2] - f[1] for f in frames if f[1] is not None and f[2] is not None]
    arrivals = [f[0] for f in frames]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    first = seen.get(1)
    first_frame = frames[frame_of[1]] if frame_of.get(1, -1) >= 0 else None
    request = (written["arrived"] + offset) * 1000 if "arrived" in written else None
    return {
        "tokens": tokens,
        "tokens_written": len(sent),
        "tokens_never_seen": len(missing),
        "first_token_ms": first - sent[0] if first is not None and sent else None,
        "enter_to_first_token_ms": (
            first - recorded["enterAt"] if first is not None and recorded["enterAt"] else None
        ),
        "enter_to_upstream_request_ms": (
            request - recorded["enterAt"] if request is not None and recorded["enterAt"] else None
        ),
        "upstream_request_to_first_write_ms": (
            sent[0] - request if sent and request is not None else None
        ),
        "first_token_to_arrival_ms": first_frame[0] - sent[0] if first_frame and sent else None,
        "first_token_in_page_ms": first - first_frame[0] if first_frame else None,
        "frames_before_first_token": frame_of.get(1, -1),
        # The first frame: the user's message and the empty reply, swapped in.
        "echo_swap_ms": frames[0][1] - frames[0][0] if frames and frames[0][1] else None,
        "echo_after_swap_ms": (
            frames[0][2] - frames[0][1] if frames and frames[0][1] and frames[0][2] else None
        ),
        "latency_ms": latency,
        "p50_ms": percentile(latency, 50),
        "p99_ms": percentile(latency, 99),
        "max_ms": percentile(latency, 100),
        "min_ms": min(latency, default=None),
        "first_tenth_p50_ms": percentile(latency[:tenth], 50),
        "first_tenth_p99_ms": percentile(latency[:tenth], 99),
        "last_tenth_p50_ms": percentile(latency[-tenth:], 50),
        "last_tenth_p99_ms": percentile(latency[-tenth:], 99),
        "witness_p50_ms": percentile(bare, 50),
        "witness_p99_ms": percentile(bare, 99),
        "witness_to_page_p50_ms": percentile(bare_to_page, 50),
        "witness_to_page_p99_ms": percentile(bare_to_page, 99),
        "to_arrival_p50_ms": percentile(to_arrival, 50),
        "to_arrival_p99_ms": percentile(to_arrival, 99),
        "in_page_p50_ms": percentile(in_page, 50),
        "in_page_p99_ms": percentile(in_page, 99),
        "to_paint_p50_ms": percentile(to_paint, 50),
        "to_paint_p99_ms": percentile(to_paint, 99),
        "frames": len(frames),
        "frame_gap_p50_ms": percentile(gaps, 50),
        "frame_chars_p50": percentile([f[3] for f in frames], 50),
        "frame_chars_max": percentile([f[3] for f in frames], 100),
        "swap_p50_ms": percentile(swap, 50),
        "swap_max_ms": percentile(swap, 100),
        "after_swap_p50_ms": percentile(after_swap, 50),
        "after_swap_max_ms": percentile(after_swap, 100),
        "observer_callbacks": recorded["callbacks"],
        "observer_total_ms": recorded["callbackMs"],
        "observer_max_ms": recorded["callbackMaxMs"],
        "observer_chars_read": recorded["scanned"],
        "final_has_every_token": all(
            f"w{n:06d}" in recorded["finalText"] for n in range(1, tokens + 1)
        ),
        "page_clock_error_ms": recorded["clock_error_ms"],
        "page_clock_trip_ms": recorded["clock_trip_ms"],
    }


def pooled(runs: list[dict]) -> dict:
    """The per-token figures over every run's tokens together."""
    latency, first_tenths, last_tenths = [], [], []
    for run in runs:
        values = run["latency_ms"]
        tenth = max(1, len(values) // 10)
        latency += values
        first_tenths += values[:tenth]
        last_tenths += values[-tenth:]
    firsts = [r["first_token_ms"] for r in runs if r["first_token_ms"] is not None]
    return {
        "first_token_ms": max(firsts, default=None),  # the worst run's
        "p50_ms": percentile(latency, 50),
        "p99_ms": percentile(latency, 99),
        "max_ms": percentile(latency, 100),
        "first_tenth_p50_ms": percentile(first_tenths, 50),
        "first_tenth_p99_ms": percentile(first_tenths, 99),
        "last_tenth_p50_ms": percentile(last_tenths, 50),
        "last_tenth_p99_ms": percentile(last_tenths, 99),
        "tokens_never_seen": sum(r["tokens_never_seen"] for r in runs),
    }


def verdict(value, limit) -> str:
    if value is None:
        return "NOT MET"
    return "met" if value <= limit else "NOT MET"


def print_runs(runs: list[dict], total: dict) -> None:
    def row(label, key, digits=1, target="", limit=None, all_value=...):
        cells = [number(run.get(key), digits) for run in runs]
        overall = total.get(key) if all_value is ... else all_value
        met = "" if limit is None else verdict(overall, limit)
        return (label, *cells, number(overall, digits) if overall is not None else "", target, met)

    header = ("ms", *[f"run {i + 1}" for i in range(len(runs))], "all runs", "target", "")
    rows = [
        row("first token (worst run in 'all')", "first_token_ms", 1, "<= 10", 10),
        row("token p50", "p50_ms"),
        row("token p99", "p99_ms", 1, "<= 30", 30),
        row("token max", "max_ms"),
        row("first 10% of tokens p50", "first_tenth_p50_ms"),
        row("first 10% of tokens p99", "first_tenth_p99_ms"),
        row("last 10% of tokens p50", "last_tenth_p50_ms"),
        row("last 10% of tokens p99", "last_tenth_p99_ms"),
        row("tokens never seen", "tokens_never_seen", 0, "0", 0),
        row("token min (clock sanity: > 0)", "min_ms", 2, all_value=None),
        row("Enter -> first token visible", "enter_to_first_token_ms", all_value=None),
    ]
    print_table("token visible in the page - upstream wrote it (ms)", header, rows)
    for index, run in enumerate(runs, start=1):
        if not run["final_has_every_token"]:
            print(f"  ! run {index}: the final element lacks some of the tokens")
    print(f"  elsewhere, measured the same way (from the issue): {ELSEWHERE}")


def print_breakdown(runs: list[dict]) -> None:
    def row(label, key, digits=1):
        return (label, *[number(run.get(key), digits) for run in runs])

    header = ("", *[f"run {i + 1}" for i in range(len(runs))])
    rows = [
        row("Enter -> upstream request arrived", "enter_to_upstream_request_ms"),
        row("upstream: request -> first token written", "upstream_request_to_first_write_ms"),
        row("first token: write -> frame at the page's JS", "first_token_to_arrival_ms"),
        row("first token: frame at the page's JS -> visible", "first_token_in_page_ms"),
        row("frames before the first token's", "frames_before_first_token", 0),
        row("first frame (message echo): htmx parse + swap", "echo_swap_ms"),
        row("first frame (message echo): chat.js scroll, layout", "echo_after_swap_ms"),
        row("upstream write -> frame at the page's JS, p50", "to_arrival_p50_ms"),
        row("upstream write -> frame at the page's JS, p99", "to_arrival_p99_ms"),
        row("frame at the page's JS -> token visible, p50", "in_page_p50_ms"),
        row("frame at the page's JS -> token visible, p99", "in_page_p99_ms"),
        *(
            [
                row("upstream write -> bare socket beside the page, p50", "witness_p50_ms"),
                row("upstream write -> bare socket beside the page, p99", "witness_p99_ms"),
                row("bare socket -> frame at the page's JS, p50", "witness_to_page_p50_ms"),
                row("bare socket -> frame at the page's JS, p99", "witness_to_page_p99_ms"),
            ]
            if runs[0].get("witness_p50_ms") is not None
            else []
        ),
        row("upstream write -> next animation frame, p50", "to_paint_p50_ms"),
        row("upstream write -> next animation frame, p99", "to_paint_p99_ms"),
        row("frames", "frames", 0),
        row("time between frames p50 (ms)", "frame_gap_p50_ms"),
        row("frame size p50 (characters)", "frame_chars_p50", 0),
        row("frame size max (characters)", "frame_chars_max", 0),
        row("htmx parse + swap per frame p50 (ms)", "swap_p50_ms", 2),
        row("htmx parse + swap per frame max (ms)", "swap_max_ms", 2),
        row("swap -> observer (chat.js scroll, layout) p50", "after_swap_p50_ms", 2),
        row("swap -> observer (chat.js scroll, layout) max", "after_swap_max_ms", 2),
        row("observer callbacks", "observer_callbacks", 0),
        row("observer time in all (ms)", "observer_total_ms", 2),
        row("observer time, longest callback (ms)", "observer_max_ms", 3),
        row("observer characters read", "observer_chars_read", 0),
        row("Daphne CPU (% of one core)", "daphne_cpu_percent", 0),
        row("Chromium CPU, all processes (%)", "chromium_cpu_percent", 0),
        row("Chromium CPU, renderer (%)", "renderer_cpu_percent", 0),
        row("page clock - bench clock (ms)", "page_clock_error_ms", 2),
        row("  within +- half of this round trip (ms)", "page_clock_trip_ms", 2),
    ]
    print_table("where the time goes, per run", header, rows)


def print_socket(sockets: list[dict]) -> None:
    def row(label, key, digits=1):
        return (label, *[number(run.get(key), digits) for run in sockets])

    rows = [
        row("first token", "ttft_added_p50_ms"),
        row("token p50", "token_latency_p50_ms"),
        row("token p99", "token_latency_p99_ms"),
        row("token max", "token_latency_max_ms"),
        row("tokens lost", "tokens_lost", 0),
        row("frames", "frames", 0),
        row("Daphne CPU (% of one core)", "daphne_cpu_percent", 0),
    ]
    print_table(
        "the same reply read by a bare Python websocket client (no browser), ms after the write",
        ("", *[f"socket {i + 1}" for i in range(len(sockets))]),
        rows,
    )


# --- main -------------------------------------------------------------------------------


def load(when: str) -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    print(f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs")
    return one, five, fifteen


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Measure when streamed tokens become visible in Chromium (bench/README.md)."
    )
    parser.add_argument("--tokens", type=int, default=2000, help="tokens in the reply")
    parser.add_argument("--rate", type=float, default=200.0, help="tokens per second")
    parser.add_argument(
        "--paragraph", type=int, default=40, help="tokens per Markdown paragraph (default 40)"
    )
    parser.add_argument("--runs", type=int, default=3, help="replies, each in a new conversation")
    parser.add_argument(
        "--socket-runs",
        type=int,
        default=1,
        help="replies also read by a bare websocket client, without a browser (0 to skip)",
    )
    parser.add_argument(
        "--witness",
        action="store_true",
        help="also read each reply with a bare socket on the same conversation (a breakdown)",
    )
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.rate <= 0 or args.runs < 1 or args.paragraph < 0:
        parser.error("tokens, rate and runs must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or RESULTS / f"visible-{stamp}.json"
    results: dict = {"arguments": vars(args) | {"json": str(json_path)}}
    results["load_before"] = load("before")
    flush = {k: v for k, v in os.environ.items() if k.startswith("CHAT_FLUSH_")}
    print(
        f"{args.tokens} tokens at {args.rate:g}/s, a paragraph every {args.paragraph}, "
        f"{args.runs} run(s); site env {flush or 'CHAT_FLUSH_* defaults'}"
    )
    timeout = args.tokens / args.rate + 60
    run_id = datetime.now().strftime("%H%M%S")

    upstream = site = browser = None
    with tempfile.TemporaryDirectory(prefix="bench-visible-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            # Both before Playwright starts any thread (start_process uses preexec_fn).
            upstream = Upstream(tmp, args.rate, args.tokens, args.paragraph)
            env = {
                "DATABASE_URL": f"sqlite:///{tmp / 'site.sqlite3'}",
                "OPENAI_BASE_URL": upstream.base_url,
                "CHANNEL_LAYER_PREFIX": f"bench-visible-{os.getpid()}",
            }
            site = Site(tmp, env)
            site.manage("migrate", "--noinput")
            username = f"visible{run_id}"
            site.manage(
                "shell",
                "-c",
                CREATE_USERS,
                extra_env={"BENCH_USERS": username, "BENCH_PASSWORD": PASSWORD},
            )
            site.start()
            browser = Browser(site)
            print(f"Chromium {browser.version}, Python {platform.python_version()}")
            offset, spread = epoch_offset()
            print(f"time.time() - time.monotonic(): spread {spread * 1e6:.1f} µs over 21 readings")
            results["epoch_offset"] = {"median_s": offset, "spread_s": spread}

            # Warm-up: load templates, the renderer, the browser's caches; not measured.
            warmup = f"bench-{run_id}-warmup"
            run_in_browser(browser, username, warmup, timeout, stop_after=min(50, args.tokens))

            runs, cookie = [], ""
            for index in range(args.runs):
                name = f"bench-{run_id}-run{index + 1}"
                upstream.reset()
                meter = Meter(site)
                recorded = run_in_browser(
                    browser,
                    username,
                    name,
                    timeout,
                    meter,
                    witness_tokens=args.tokens if args.witness else 0,
                )
                written = upstream.times().get(name, {})
                run = run_figures(recorded, written, offset, args.tokens) | meter.figures
                runs.append(run)
                cookie = recorded["cookie"]
                print(
                    f"run {index + 1}: first token {number(run['first_token_ms'])} ms, "
                    f"p50 {number(run['p50_ms'])}, p99 {number(run['p99_ms'])}, "
                    f"never seen {run['tokens_never_seen']}",
                    flush=True,
                )
            results["runs"] = runs
            results["all_runs"] = pooled(runs)
            print_runs(runs, results["all_runs"])
            print_breakdown(runs)

            if args.socket_runs:
                results["socket"] = socket_runs(site, upstream, args, cookie, tmp, run_id)
                print_socket(results["socket"])
        except Exception:
            for log in ("daphne.log", "upstream.log"):
                if tail := log_tail(tmp / log):
                    print(f"\n--- last lines of {log} ---\n{tail}", file=sys.stderr)
            raise
        finally:
            if browser is not None:
                browser.close()
            if site is not None:
                site.stop()
            if upstream is not None:
                upstream.stop()

    total = results["all_runs"]
    results["targets"] = {
        f"first token <= {FIRST_TOKEN_TARGET_MS} ms": verdict(
            total["first_token_ms"], FIRST_TOKEN_TARGET_MS
        ),
        f"p99 <= {P99_TARGET_MS} ms": verdict(total["p99_ms"], P99_TARGET_MS),
        "every token seen": "met" if total["tokens_never_seen"] == 0 else "NOT MET",
    }
    print("\ntargets (from the issue):")
    for target, met in results["targets"].items():
        print(f"  {met:7}  {target}")
    results["load_after"] = load("after")
    for run in results["runs"]:
        run.pop("latency_ms")  # per-token values: long, and in no table
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    print(f"results written to {json_path}")


def socket_runs(site: Site, upstream: Upstream, args, cookie: str, tmp: Path, run_id: str):
    """The same reply, read by streaming_client.py over a websocket, with the page's cookie."""
    timeout = args.tokens / args.rate + 60
    outcomes = []
    with httpx.Client(base_url=site.url, trust_env=False, timeout=60) as http:
        for part in cookie.split("; "):
            key, _, value = part.partition("=")
            http.cookies.set(key, value)
        for index in range(args.socket_runs):  # one at a time, like the browser's runs
            created = http.post("/c/new/", headers={"X-CSRFToken": http.cookies["csrftoken"]})
            page = http.get(created.headers["location"])
            name = f"bench-{run_id}-socket{index + 1}"
            stream = {"name": name, "path": WS_CONNECT.search(page.text)[1], "cookie": cookie}
            spec = {"url": site.url, "tokens": args.tokens, "timeout": timeout, "keep": False}
            spec["streams"] = [stream]
            upstream.reset()
            before = daphne_cpu(site)
            result = run_client("site", spec, tmp, timeout + 60, f"-{name}")
            used = daphne_cpu(site) - before
            outcome = figures(result, upstream.times(), args.rate, args.tokens)
            outcome["daphne_cpu_percent"] = used / (result["ended"] - result["started"]) * 100
            outcomes.append(outcome)
    return outcomes


if __name__ == "__main__":
    main()
