"""Markdown rendering: hostile model output stays inert; streaming adds up to the final render."""

import html
import random
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.template import Context, Template
from hostile import HOSTILE

from conversations import rendering
from conversations.page import MessageIds
from conversations.rendering import (
    MAX_TAIL,
    StreamingRenderer,
    delta_html,
    render_markdown,
)

# --- what "safe" means -----------------------------------------------------------------

FORBIDDEN_TAGS = {
    "script", "iframe", "frame", "frameset", "svg", "math", "img", "picture", "source",
    "video", "audio", "style", "link", "meta", "base", "form", "input", "textarea",
    "select", "object", "embed", "template",
}  # fmt: skip
FORBIDDEN_ATTRIBUTES = {"style", "src", "srcset", "formaction", "action", "background", "poster"}
REL = "noopener noreferrer nofollow"


class Elements(HTMLParser):
    """Every start tag in a fragment, with its (unescaped) attributes."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict]] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def assert_safe(markup: str) -> None:
    for tag, attributes in Elements(markup).found:
        assert tag not in FORBIDDEN_TAGS, markup
        assert tag in rendering.ALLOWED_TAGS, markup
        for name in attributes:
            assert not name.startswith("on"), markup
            assert name not in FORBIDDEN_ATTRIBUTES, markup
            # Nothing else either: no id to clobber the page's, no hx-* for htmx to act on.
            assert name in rendering.ALLOWED_ATTRIBUTES.get(tag, set()) | {"rel"}, markup
        if tag == "a":  # nh3 drops an href it cannot parse as a URL: the link is then inert
            href = attributes.get("href", "https:")
            assert urlsplit(href).scheme in {"http", "https", "mailto"}, markup
            assert attributes["target"] == "_blank", markup
            assert attributes["rel"] == REL, markup


def text_of(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


# --- hostile output ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE, ids=lambda text: repr(text[:40]))
def test_hostile_output_renders_inert(text):
    assert_safe(render_markdown(text))


@pytest.mark.parametrize("text", HOSTILE[:38], ids=lambda text: repr(text[:40]))
def test_hostile_output_is_inert_while_streaming_too(text):
    renderer = StreamingRenderer()
    rng = random.Random(text)
    for piece in random_pieces(text, rng):
        appended, tail = renderer.feed(piece)
        assert_safe(appended)
        assert_safe(tail)
    assert_safe(rest_of(renderer))


def test_raw_html_shows_as_text():
    markup = render_markdown('Hi <b>there</b> <a href="https://ok.example" onclick="x">ok</a>')
    assert "&lt;b&gt;there&lt;/b&gt;" in markup
    assert "<a" not in markup


def test_html_in_code_is_escaped_code():
    inline = render_markdown("`<b>bold</b>`")
    assert "<code>&lt;b&gt;bold&lt;/b&gt;</code>" in inline
    fenced = render_markdown("```\n<script>alert(1)</script>\n```")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in fenced


@pytest.mark.parametrize(
    "text",
    [
        "[x](javascript:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "[x](/relative)",
        "[x](//evil.example)",
    ],
)
def test_links_other_than_http_https_mailto_are_plain_text(text):
    markup = render_markdown(text)
    assert "<a" not in markup
    assert text_of(markup).strip() == text


def test_links_open_in_a_new_tab_without_referrer():
    markup = render_markdown("[docs](https://docs.example/a?b=1&c=2) and <mailto:me@x.example>")
    (first, second) = [attrs for tag, attrs in Elements(markup).found if tag == "a"]
    assert first == {
        "href": "https://docs.example/a?b=1&c=2",
        "target": "_blank",
        "rel": REL,
    }
    assert second["href"] == "mailto:me@x.example"


def test_images_become_links_that_load_nothing_by_themselves():
    for text in (
        "![A cat](https://img.example/cat.png)",
        "![A cat][c]\n\n[c]: https://img.example/cat.png",
    ):
        markup = render_markdown(text)
        assert "<img" not in markup
        (link,) = Elements(markup).found[1:]
        assert link == (
            "a",
            {
                "href": "https://img.example/cat.png",
                "class": "image-link",
                "target": "_blank",
                "rel": REL,
            },
        )
        assert text_of(markup).strip() == "Image: A cat"


def test_an_image_inside_a_link_is_text_in_that_link():
    markup = render_markdown("[![logo](https://img.example/l.png)](https://ok.example)")
    assert markup.count("<a ") == 1
    assert 'href="https://ok.example"' in markup
    assert text_of(markup).strip() == "Image: logo"


# --- what Markdown looks like ----------------------------------------------------------------


def test_paragraphs_lists_and_headings():
    markup = render_markdown("# Title\n\nSome *text*.\n\n- one\n- two\n  1. nested\n\n---\n")
    assert markup.startswith("<h1>Title</h1>")
    assert "<p>Some <em>text</em>.</p>" in markup
    assert re.search(r"<ul>\s*<li>one</li>\s*<li>two\s*<ol>\s*<li>nested</li>", markup)
    assert "<hr>" in markup


def test_tables_with_alignment_as_classes():
    markup = render_markdown("| a | b |\n|:-:|--:|\n| `x` | ~~y~~ |\n")
    assert '<th class="align-center">a</th>' in markup
    assert '<td class="align-right"><s>y</s></td>' in markup
    assert "style" not in markup


def test_code_with_a_language_is_highlighted_with_a_copy_button():
    markup = render_markdown("```python\ndef greet(name):\n    return name\n```\n")
    assert markup.startswith('<div class="code-block" data-lang="python">')
    assert '<button type="button" class="copy-code">Copy</button>' in markup
    assert '<pre class="highlight"><code><span class="tok-k">def</span>' in markup
    code = re.search(r"<code>(.*)</code>", markup, re.S).group(1)
    assert text_of(code) == "def greet(name):\n    return name\n"


@pytest.mark.parametrize("fence", ["```", "```nosuchlanguage", "~~~ {weird info}"])
def test_code_without_a_known_language_is_plain_escaped_code(fence):
    markup = render_markdown(f"{fence}\nif a < b: print('<b>')\n{fence[:3]}\n")
    assert '<button type="button" class="copy-code">Copy</button>' in markup
    assert "<code>if a &lt; b: print('&lt;b&gt;')\n</code>" in markup
    assert "tok-" not in markup


def test_indented_code_gets_a_copy_button_too():
    markup = render_markdown("Text:\n\n    x = 1\n")
    assert "copy-code" in markup
    assert "<code>x = 1\n</code>" in markup


def test_markdown_template_filter():
    template = Template("{% load chat %}<div>{{ text|markdown }}</div>")
    rendered = template.render(Context({"text": "**bold** <script>"}))
    assert rendered == "<div><p><strong>bold</strong> &lt;script&gt;</p>\n</div>"


@pytest.mark.parametrize(
    ("appended", "tail"), [("", ""), ("<p>a</p>", "<p>b</p>"), ("", "<p>&lt;</p>")]
)
def test_delta_is_the_partial_filled_in(appended, tail):
    ids = MessageIds(41)
    context = {"appended": appended, "tail": tail, "text_id": ids.text, "tail_id": ids.tail}
    direct = rendering._partial("delta", context | {"tail_class": "message-tail markdown"})
    assert delta_html(41, appended, tail) == direct
    context |= {"text_id": ids.reasoning_text, "tail_id": ids.reasoning_tail}
    direct = rendering._partial("delta", context | {"tail_class": "reasoning-tail markdown"})
    assert delta_html(41, appended, tail, reasoning=True) == direct


def test_delta_always_sends_the_tail_so_an_emptied_tail_is_cleared():
    assert delta_html(7, "", "") == (
        '<div id="message-7-tail" class="message-tail markdown" hx-swap-oob="true"></div>'
    )
    assert delta_html(7, "<p>a</p>", "<p>b</p>").startswith(
        '<div hx-swap-oob="beforeend:#message-7-text"><p>a</p></div>\n<div id="message-7-tail"'
    )


# --- streaming -----------------------------------------------------------------------------------

REPLIES = [
    """\
## Installing the tool

You need **Python 3.12** or newer. Check with `python --version`; if it prints an
older version, install a newer one first.

1. Create a virtual environment:

   ```bash
   python -m venv .venv
   source .venv/bin/activate
   ```

2. Install the package:

   ```bash
   pip install example-tool
   ```

3. Run it once to create its settings file.

That's it. See the [documentation](https://docs.example/tool) for more.
""",
    """\
Here is a function that does it:

```python
import itertools


def pairs(items):
    \"\"\"Successive pairs: [1, 2, 3] -> (1, 2), (2, 3).\"\"\"
    return itertools.pairwise(items)


class Window:
    def __init__(self, size):
        self.size = size
```

And the same in JavaScript:

~~~js
function pairs(items) {
  // ``` inside a tilde fence is just text
  return items.slice(1).map((item, i) => [items[i], item]);
}
~~~

| language | function | lines |
|:---------|:--------:|------:|
| Python   | `pairs`  | 3     |
| JS       | `pairs`  | 3     |

> **Note:** both return *pairs*, not windows of any size.
> Use `more_itertools.windowed` for that.

---

Setext heading
==============

Another one
-----------
""",
    """\
[docs]: https://docs.example/ "The docs"
[api]: <https://api.example/v1>

Read [the docs][docs] and the [API reference][api], or just [docs].

* A list with a lazy
continuation line
* and a second item

  with a second paragraph (so the list is loose)

  - nested item one
  - nested item two

+ a new list, because the marker changed

7. starts at seven
8) a new list again, other delimiter

    indented code after a list? no: a paragraph continuation or code

Hard break at the end of this line\\
and the next line. ~~Struck~~ text, <https://auto.example/link>, ![a chart](https://img.example/c.png).

> Quote with a list:
> - one
> - two
lazy line in the quote

    indented code block
    second line
""",
    """\
A paragraph
- interrupted by a list
- without a blank line
A line after the list (lazy continuation)

Paragraph
# interrupted by a heading
| not | a table |
|-----|---------|
| but | now yes |

Text
```
fence interrupting a paragraph
```
***
- - -
1. one

   two
1. three
10. ten
- [ ] not a task list here
-
  empty first line item
""",
    """\
Unclosed code at the end:

```python
def unfinished():
    return 1

print(unfinished())""",
    "Just one line without a newline",
    "\n\n\nleading blank lines\n\n\n\ntrailing ones\n\n\n",
]

# Blocks for random documents. References are defined in the block that uses them,
# before the use (a use before its definition renders differently while streaming).
BLOCKS = [
    "Plain paragraph with *emphasis*, **strong**, `code` and a [link](https://x.example).",
    "A paragraph\nover two lines",
    "# Heading one",
    "### Heading *three*",
    "Setext\n===",
    "Setext two\n---",
    "---",
    "* * *",
    "- a\n- b\n- c",
    "- a\n\n- b loose",
    "1. one\n2. two\n   - nested\n   - nested too\n3. three",
    "3) three\n4) four",
    "- item\n\n  continued paragraph in the item\n\n      code in the item",
    "- item with code:\n\n  ```sh\n  echo hi\n\n  echo there\n  ```",
    "> quote\n> more\nlazy",
    "> quote with\n>\n> - list\n> - in it",
    "```python\nx = 1\n\ny = 2\n```",
    "```\nno language\n\nblank lines\n```",
    "~~~\ntilde ``` fence\n~~~",
    "````md\n```\nnested fence\n```\n````",
    "    indented code\n\n    more code",
    "| a | b |\n|---|:-:|\n| 1 | 2 |\n| 3 | 4 |",
    "| only | header |\n|---|---|",
    "[ref]: https://ref.example\n\nUse [ref] and [text][ref].",
    "Text with <b>html</b> and &amp; entities &copy; and \\*escapes\\*.",
    "Line with hard break  \nnext line",
    "[ri]: https://img.example/r.png\n\n![img](https://img.example/i.png) and ![ref img][ri]",
    "1. only item",
    "-",
    "+ plus list",
    "10. ten\n11. eleven",
    "Paragraph\n- list right after",
    "Paragraph\n| t | h |\n|---|---|\n| c | d |",
]
SEPARATORS = ["\n\n", "\n\n", "\n\n", "\n", "\n\n\n", "\n \n", "\n\t\n"]


def random_document(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        parts.append(rng.choice(BLOCKS))
        parts.append(rng.choice(SEPARATORS))
    if rng.random() < 0.3:
        parts.pop()  # no newline at the end
    return "".join(parts)


def random_pieces(text: str, rng: random.Random) -> list[str]:
    """Streaming deltas: mostly a few characters, sometimes a burst, sometimes one character."""
    pieces, at = [], 0
    while at < len(text):
        size = rng.choice([1, 1, 2, 3, 4, 5, 8, 13, 21, 60, 200])
        pieces.append(text[at : at + size])
        at += size
    return pieces


def rest_of(renderer: StreamingRenderer) -> str:
    """What a renderer has not appended yet, rendered as final (as if the reply ended)."""
    text = renderer._open + ("\n" if renderer._held_cr else "")
    env = {"references": dict(renderer._references)}
    return rendering._html(rendering._parse(text, env), env) if text else ""


def stream(text: str, pieces: list[str]) -> tuple[list[str], str]:
    """Feed ``pieces``; check that what is appended is always the start of the final render."""
    final = render_markdown(text)
    renderer = StreamingRenderer()
    appended = []
    for piece in pieces:
        html_piece, _tail = renderer.feed(piece)
        appended.append(html_piece)
        assert final.startswith("".join(appended)), "appended HTML that the final render lacks"
    return appended, rest_of(renderer)


@pytest.mark.parametrize("reply", REPLIES, ids=range(len(REPLIES)))
def test_streamed_reply_adds_up_to_the_final_render(reply):
    for seed in range(60):
        appended, rest = stream(reply, random_pieces(reply, random.Random(seed)))
        assert "".join(appended) + rest == render_markdown(reply)


def test_streamed_reply_in_single_characters():
    for reply in REPLIES:
        appended, rest = stream(reply, list(reply))
        assert "".join(appended) + rest == render_markdown(reply)


def test_random_documents_stream_to_their_final_render():
    rng = random.Random(1234)
    for _ in range(400):
        document = random_document(rng)
        appended, rest = stream(document, random_pieces(document, rng))
        assert "".join(appended) + rest == render_markdown(document), document


def test_blocks_are_appended_as_they_complete():
    renderer = StreamingRenderer()
    assert renderer.feed("First paragraph.\n\n") == ("", "<p>First paragraph.</p>\n")
    appended, tail = renderer.feed("Second")
    assert appended == "<p>First paragraph.</p>\n"
    assert tail == "<p>Second</p>\n"


def test_crlf_split_between_pieces():
    text = "a\r\n\r\n- b\r\n- c\r\n\r\nd"
    appended, rest = stream(text, ["a\r", "\n\r", "\n- b\r", "\n- c\r\n\r", "\nd"])
    assert "".join(appended) + rest == render_markdown(text)


def test_an_open_code_fence_shows_as_a_code_block_of_what_arrived():
    renderer = StreamingRenderer()
    renderer.feed("Intro.\n\n")
    _, tail = renderer.feed("```python\ndef f(x):\n    return x < 1\n")
    assert '<div class="code-block" data-lang="python">' in tail
    assert "copy-code" in tail
    assert "<code>def f(x):\n    return x &lt; 1\n</code>" in tail  # highlighted once complete


def test_a_growing_table_shows_as_a_table():
    renderer = StreamingRenderer()
    renderer.feed("Table:\n\n")
    _, tail = renderer.feed("| name | size |\n|---|---:|\n| a | 1 |\n")
    assert "<table>" in tail
    assert '<td class="align-right">1</td>' in tail


def test_text_not_rendered_yet_is_shown_escaped_at_the_end_of_the_tail():
    renderer = StreamingRenderer()
    renderer.feed("word " * 40)  # rendered: the tail is one paragraph
    _, tail = renderer.feed("<script>alert(1)</script> and **more")
    # After the space that the rendered paragraph dropped, so the words stay apart.
    assert tail.endswith(
        '<span class="md-pending"> &lt;script&gt;alert(1)&lt;/script&gt; and **more</span></p>\n'
    )


def test_text_not_rendered_yet_never_lands_inside_a_tag():
    renderer = StreamingRenderer()
    renderer.feed("word " * 40 + '[](https://ok.example "a</b")')  # "<" in an attribute value
    _, tail = renderer.feed(" more")
    assert_safe(tail)
    assert tail.endswith(
        'rel="noopener noreferrer nofollow"><span class="md-pending"> more</span></a></p>\n'
    )


def test_text_not_rendered_yet_goes_on_inside_an_open_code_block():
    renderer = StreamingRenderer()
    renderer.feed("```\n" + "line\n" * 20)
    _, tail = renderer.feed("next")
    assert tail.endswith('line\n<span class="md-pending">next</span></code></pre></div>\n')


def test_a_reference_used_before_its_definition_is_text_until_the_final_render():
    renderer = StreamingRenderer()
    appended = [
        renderer.feed(c)[0] for c in "See [the docs].\n\n[the docs]: https://docs.example\n"
    ]
    assert "".join(appended) == "<p>See [the docs].</p>\n"  # appended before the definition came
    assert "docs.example" in render_markdown("See [the docs].\n\n[the docs]: https://docs.example")


def test_snapshot_has_everything_so_far():
    renderer = StreamingRenderer()
    renderer.feed("One.\n\nTwo.\n\nThree")
    assert renderer.snapshot() == ("<p>One.</p>\n<p>Two.</p>\n", "<p>Three</p>\n")


# --- streaming stays linear ---------------------------------------------------------------------


def realistic_reply(tokens: int) -> str:
    """About ``tokens`` tokens (4 characters each) of the replies above, varied."""
    parts, size, n = [], 0, 0
    while size < tokens * 4:
        part = REPLIES[n % 3].replace("pairs", f"pairs_{n}") + "\n"
        parts.append(part)
        size += len(part)
        n += 1
    return "".join(parts)


def parsed_lengths(monkeypatch, text: str, piece_size: int) -> list[int]:
    """Lengths of the texts given to the Markdown parser, per feed."""
    lengths: list[int] = []
    parse = rendering._parse
    monkeypatch.setattr(rendering, "_parse", lambda t, env: lengths.append(len(t)) or parse(t, env))
    renderer = StreamingRenderer()
    for at in range(0, len(text), piece_size):
        renderer.feed(text[at : at + piece_size])
    return lengths


def test_work_per_feed_does_not_grow_with_the_reply(monkeypatch):
    short = parsed_lengths(monkeypatch, realistic_reply(2_000), piece_size=20)
    long = parsed_lengths(monkeypatch, realistic_reply(20_000), piece_size=20)
    text_length = len(realistic_reply(20_000))
    assert max(long) <= max(short) < 2_000  # the longest block, not the reply
    assert sum(long) < 4 * text_length  # each character is parsed a few times, not per feed
    assert len(long) < text_length / 20 / 2  # most feeds parse nothing


@pytest.mark.parametrize(
    "text",
    [
        "```js\n" + "const x = [1, 2, 3];\n" * 5_000 + "```\n",
        "word " * 30_000,  # one long line
        "| a | b |\n|---|---|\n" + "| cell | other cell |\n" * 3_000,
        "- item\n" * 10_000,
        "- item\n\n" * 10_000,
    ],
    ids=["fence", "line", "table", "list", "loose list"],
)
def test_even_one_huge_block_is_rendered_in_bounded_pieces(monkeypatch, text):
    lengths: list[int] = []
    parse = rendering._parse
    monkeypatch.setattr(rendering, "_parse", lambda t, env: lengths.append(len(t)) or parse(t, env))
    renderer = StreamingRenderer()
    streamed = []
    for at in range(0, len(text), 20):
        appended, tail = renderer.feed(text[at : at + 20])
        streamed.append(appended)
        assert len(tail) < 4 * MAX_TAIL
    streamed.append(rest_of(renderer))
    assert max(lengths) < 2.2 * MAX_TAIL
    assert sum(lengths) < 6 * len(text)
    markup = "".join(streamed)
    assert_safe(markup)
    if text.startswith("```"):  # cut into several blocks while streaming, but all the code
        code = "".join(re.findall(r"<code>(.*?)</code>", markup, re.S))
        assert text_of(code) == text[len("```js\n") : -len("```\n")]
