"""How much rendering a streamed reply costs, against rendering it once (bench/README.md).

.venv/bin/python bench/render.py [--tokens 20000] [--repeat 5] [--json PATH]
"""

import argparse
import gc
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# What an assistant writes, in blocks; {n} varies each copy a little.
BLOCKS = [
    "## Step {n}: setting things up\n",
    "Before anything else, make sure the **service** is reachable from the machine you are "
    "working on. Run `curl -sS https://api.example/health` and check that it answers with "
    "`ok`; if it does not, look at the [troubleshooting guide](https://docs.example/t/{n}) "
    "first. Most problems at this stage come from a proxy, a firewall rule, or an expired "
    "certificate, and each of those has a quick fix described there.\n",
    "The rest of this section assumes Python {n}.12 or newer, a virtual environment, and "
    "about *ten minutes*.\n",
    "- Install the client library\n- Create a settings file:\n  - `API_KEY`, from your "
    "account page\n  - `BASE_URL`, only if you self-host\n- Run the first request\n",
    "1. **Read** the input file line by line.\n2. **Parse** each line into a record; skip "
    "blank lines and comments.\n3. **Validate** the record against the schema, collecting "
    "errors instead of stopping at the first one.\n4. **Write** the valid records out.\n",
    "```python\nimport csv\nfrom pathlib import Path\n\n\ndef load_{n}(path: Path) -> "
    'list[dict]:\n    """Read records, skipping comments."""\n    with path.open() as '
    "handle:\n        rows = csv.DictReader(line for line in handle if not line.startswith"
    '("#"))\n        return [row for row in rows if any(row.values())]\n\n\nif __name__ == '
    '"__main__":\n    for record in load_{n}(Path("data.csv")):\n        print(record)\n```\n',
    "```bash\npython -m venv .venv\nsource .venv/bin/activate\npip install example-client"
    "=={n}.0\n```\n",
    "```js\nexport async function fetchAll{n}(urls) {{\n  const results = await Promise."
    "allSettled(urls.map((u) => fetch(u)));\n  return results\n    .filter((r) => r.status "
    '=== "fulfilled")\n    .map((r) => r.value);\n}}\n```\n',
    "| option | default | meaning |\n|:-------|:-------:|--------:|\n| `retries` | {n} | "
    "how often a failed request is repeated |\n| `timeout` | 30 s | per request |\n| "
    "`verify` | `true` | check TLS certificates |\n| `proxy` | none | an HTTP(S) proxy URL |\n",
    "> **Note:** the defaults are fine for most uses. Change `timeout` only if your requests "
    "regularly take longer than half a minute.\n",
    "That covers the basics. If you run into something not described here, the error "
    "message usually names the setting to change.\n",
    "---\n",
]


def realistic_reply(tokens: int) -> str:
    rng = random.Random(20_000)
    parts, size, n = [], 0, 0
    while size < tokens * 4:
        block = rng.choice(BLOCKS).format(n=n)
        parts.append(block + "\n")
        size += len(block) + 1
        n += 1
    return "".join(parts)


def pieces(tokens: list[str], rng: random.Random | None) -> list[str]:
    """One piece per upstream event of 1-4 tokens (``rng``), or per 25 ms frame of 5 tokens."""
    pieces, at = [], 0
    while at < len(tokens):
        size = rng.randint(1, 4) if rng else 5
        pieces.append("".join(tokens[at : at + size]))
        at += size
    return pieces


def stream(pieces: list[str]) -> tuple[list[float], int]:
    """Seconds per feed, and bytes sent to a browser."""
    from conversations.rendering import StreamingRenderer, delta_html

    renderer, times, sent, clock = StreamingRenderer(), [], 0, time.perf_counter
    for piece in pieces:
        started = clock()
        appended, tail = renderer.feed(piece)
        times.append(clock() - started)
        sent += len(delta_html(1, appended, tail))
    return times, sent


def best_of(repeat: int, run):
    """The run with the smallest total (the least disturbed by the rest of the machine)."""
    runs = []
    for _ in range(repeat):
        gc.collect()
        runs.append(run())
    return min(runs, key=lambda result: sum(result[0]) if isinstance(result, tuple) else result)


def measure(name: str, pieces: list[str], single: float, repeat: int) -> dict:
    times, sent = best_of(repeat, lambda: stream(pieces))
    tenth, result = max(1, len(times) // 10), {"mode": name, "flushes": len(times)}
    result |= {"total_ms": round(sum(times) * 1e3, 1), "ratio": round(sum(times) / single, 2)}
    for part, values in (("first_10pct", times[:tenth]), ("last_10pct", times[-tenth:])):
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]  # not nearest-rank
        mean = statistics.fmean(ordered)
        result[part] = {"mean_us": round(mean * 1e6, 1), "p99_us": round(p99 * 1e6, 1)}
    return result | {"sent_bytes": sent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from conversations.rendering import render_markdown

    text = realistic_reply(args.tokens)
    tokens = re.findall(r"\s*\S{1,4}|\s+", text)  # at most 4 characters after any whitespace
    final_html = render_markdown(text)  # warms caches (lexers) for both sides

    def render_once() -> float:
        started = time.perf_counter()
        render_markdown(text)
        return time.perf_counter() - started

    single = best_of(args.repeat, render_once)
    results = {"tokens": len(tokens), "characters": len(text), "final_html_bytes": len(final_html)}
    results["single_render_ms"] = round(single * 1e3, 1)
    results["modes"] = [
        measure("deltas of 1-4 tokens", pieces(tokens, random.Random(4)), single, args.repeat),
        measure("25 ms frames, 5 tokens", pieces(tokens, None), single, args.repeat),
    ]
    print(f"reply: {len(tokens)} tokens, {len(text)} characters, {len(final_html)} bytes of HTML")
    print(f"one render_markdown of the final text: {results['single_render_ms']} ms")
    for mode in results["modes"]:
        first, last = mode["first_10pct"], mode["last_10pct"]
        print(f"\nstreamed as {mode['mode']}: {mode['flushes']} flushes")
        print(f"  total {mode['total_ms']} ms = {mode['ratio']}x one render (goal: <= 3x)")
        print(f"  per flush, first 10%: mean {first['mean_us']} us, p99 {first['p99_us']} us")
        print(f"  per flush, last 10%:  mean {last['mean_us']} us, p99 {last['p99_us']} us")
        print(f"  sent to a browser: {mode['sent_bytes']} bytes")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
