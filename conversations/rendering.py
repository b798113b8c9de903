"""Message text -> safe HTML, and the HTML fragments pushed to browsers.

Model output is untrusted input: whoever controls the prompt controls it. An
assistant reply is CommonMark (plus tables and strikethrough) rendered by
markdown-it-py with raw HTML turned off and only ``http``, ``https`` and
``mailto`` links, then cleaned by nh3 with an explicit allowlist. Either layer
alone keeps script, event handlers, styles and self-loading resources (images,
frames) out of the page; together a bug in one is not enough. User messages
are only escaped.

While a reply streams, :class:`StreamingRenderer` renders it block by block
(see its docstring), so the cost of a reply stays linear in its length.
"""

import functools
import html
import itertools
import math
import re

import nh3
from django.template.loader import get_template
from markdown_it import MarkdownIt
from markdown_it.common.utils import unescapeAll
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import find_lexer_class_by_name
from pygments.util import ClassNotFound

from .page import MessageIds

PAGE = "conversations/conversation_detail.html"


# --- links ----------------------------------------------------------------

# markdown-it hands links over entity-decoded and percent-encoded (no raw spaces or
# control characters left), so the scheme the browser will see is at the very start.
# Everything else (javascript:, data:, vbscript:, relative, //host) is not a link.
ALLOWED_URL = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
LINK_REL = "noopener noreferrer nofollow"


def is_allowed_url(url: str) -> bool:
    return ALLOWED_URL.match(url) is not None


# --- code blocks ----------------------------------------------------------

# Classes carry a prefix so that no page style (.notice, .visually-hidden, ...) can be
# borrowed by model output; markdown.css holds the colour theme for these classes.
CODE_CLASS_PREFIX = "tok-"
CODE_FORMATTER = HtmlFormatter(nowrap=True, classprefix=CODE_CLASS_PREFIX)
# Highlighting is a nicety: past this size (or for a language Pygments does not know)
# code is shown escaped, which keeps the cost of a hostile reply predictable.
HIGHLIGHT_LIMIT = 20_000
LANGUAGE = re.compile(r"[\w+#.-]{1,32}")
STREAMING = "chat_streaming"  # env flag: rendering the still-open tail of a reply


@functools.lru_cache(maxsize=128)
def _lexer_class(language: str):
    try:
        return find_lexer_class_by_name(language)
    except ClassNotFound:
        return None


def code_block_html(code: str, language: str, *, highlighted: bool = True) -> str:
    """A code block with its copy button (wired up by static/chat/copy.js)."""
    lexer_class = _lexer_class(language.lower()) if language and highlighted else None
    if lexer_class is not None and len(code) <= HIGHLIGHT_LIMIT:
        body = highlight(code, lexer_class(stripnl=False), CODE_FORMATTER)
    else:
        body = html.escape(code)
    label = f' data-lang="{html.escape(language)}"' if language else ""
    return (
        f'<div class="code-block"{label}>'
        '<button type="button" class="copy-code">Copy</button>'
        f'<pre class="highlight"><code>{body}</code></pre></div>\n'
    )


def _fence_language(info: str) -> str:
    words = unescapeAll(info).split(maxsplit=1)
    return words[0] if words and LANGUAGE.fullmatch(words[0]) else ""


def _render_fence(renderer, tokens, idx, options, env) -> str:
    # While a reply streams, code in the open tail is shown plain: it is highlighted
    # once, when its block is complete, instead of again on every flush.
    token = tokens[idx]
    return code_block_html(
        token.content, _fence_language(token.info), highlighted=not env.get(STREAMING)
    )


def _render_code_block(renderer, tokens, idx, options, env) -> str:
    return code_block_html(tokens[idx].content, "")


# --- links, images and table cells, on the token stream -------------------


def _safe_links(state) -> None:
    """Core rule: links open in a new tab, images become links, alignment a class.

    An image never loads by itself (it could track the reader or show anything):
    it becomes a link the reader may choose to open. ``style`` is not allowed, so
    a table cell's alignment is carried by a class.
    """
    for token in state.tokens:
        if token.type in ("th_open", "td_open") and token.attrs:
            align = str(token.attrs.pop("style", "")).removeprefix("text-align:")
            if align in ("left", "center", "right"):
                token.attrSet("class", f"align-{align}")
        elif token.type == "inline" and token.children:
            token.children = _links_of(token.children, state)


def _links_of(children: list[Token], state) -> list[Token]:
    result, depth = [], 0
    for token in children:
        if token.type == "link_open":
            depth += 1
            token.attrSet("target", "_blank")
            token.attrSet("rel", LINK_REL)
        elif token.type == "link_close":
            depth -= 1
        elif token.type == "image":
            result.extend(_image_as_link(token, state, inside_link=depth > 0))
            continue
        result.append(token)
    return result


def _image_as_link(image: Token, state, *, inside_link: bool) -> list[Token]:
    alt = state.md.renderer.renderInlineAsText(image.children, state.md.options, state.env)
    text = Token("text", "", 0, content=f"Image: {alt}" if alt else "Image")
    if inside_link:  # a link in a link is not HTML; the outer link stays the link
        return [text]
    link = Token("link_open", "a", 1, attrs={"href": image.attrGet("src") or ""})
    if image.attrGet("title"):
        link.attrSet("title", image.attrGet("title"))
    link.attrSet("class", "image-link")
    link.attrSet("target", "_blank")
    link.attrSet("rel", LINK_REL)
    return [link, text, Token("link_close", "a", -1)]


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.validateLink = is_allowed_url  # also decides autolinks, images and definitions
    md.core.ruler.push("safe_links", _safe_links)
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("code_block", _render_code_block)
    return md


MARKDOWN = _markdown()


# --- the sanitizer --------------------------------------------------------

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "code",
    "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th",
    "td", "div", "span", "button",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "target", "class"},
    "ol": {"start"},
    "div": {"class", "data-lang"},
    "pre": {"class"},
    "span": {"class"},
    "button": {"type", "class"},
    "th": {"class"},
    "td": {"class"},
}
ALLOWED_CLASSES = {
    "a": {"image-link"},
    "div": {"code-block"},
    "pre": {"highlight"},
    "button": {"copy-code"},
    "th": {"align-left", "align-center", "align-right"},
    "td": {"align-left", "align-center", "align-right"},
}
CODE_CLASS = re.compile(rf"{CODE_CLASS_PREFIX}[A-Za-z0-9-]+")
FORCED_VALUES = {("a", "target"): "_blank", ("button", "type"): "button"}


def _allowed_class(tag: str, name: str) -> bool:
    if tag == "span":
        return CODE_CLASS.fullmatch(name) is not None
    return name in ALLOWED_CLASSES.get(tag, ())


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    """Second line of defence: what the Markdown layer should never emit anyway."""
    if attribute == "href":
        return value if is_allowed_url(value) else None  # nh3 lets relative URLs through
    if attribute == "class":
        kept = [name for name in value.split() if _allowed_class(tag, name)]
        return " ".join(kept) or None
    return FORCED_VALUES.get((tag, attribute), value)


SANITIZER_OPTIONS = {
    "tags": ALLOWED_TAGS,
    "clean_content_tags": {"script", "style"},
    "attributes": ALLOWED_ATTRIBUTES,
    "attribute_filter": _filter_attribute,
    "strip_comments": True,
    "link_rel": LINK_REL,
    "url_schemes": {"http", "https", "mailto"},
}
# A Cleaner is built once instead of per call: a quarter of the cost for a small tail.
sanitize = nh3.Cleaner(**SANITIZER_OPTIONS).clean


# --- whole texts ----------------------------------------------------------


def _parse(text: str, env: dict) -> list[Token]:
    """Every Markdown parse goes through here (the tests count the text it is given)."""
    return MARKDOWN.parse(text, env)


def _html(tokens: list[Token], env: dict, *, streaming: bool = False) -> str:
    env = {**env, STREAMING: streaming}
    return sanitize(MARKDOWN.renderer.render(tokens, MARKDOWN.options, env))


def render_markdown(text: str) -> str:
    """An assistant message as sanitized HTML."""
    env: dict = {}
    return _html(_parse(text, env), env)


# --- streaming ------------------------------------------------------------

MIN_STEP = 32  # new characters that always justify rendering the open tail again...
GROWTH = 0.5  # ...and, for a longer tail, growth by this fraction of what was rendered
MAX_TAIL = 16_000  # an open block longer than this is cut while streaming
LIST_MARKER_START = frozenset("-+*0123456789")
# A code fence line, possibly inside block quotes or a list item (only a scan hint).
FENCE_LINE = re.compile(r"[ \t>]*(?:(?:[-+*]|\d{1,9}[.)])[ \t]+)?(`{3,}|~{3,})(.*)")
NEWLINES = re.compile(r"\r\n?")
CLOSING_TAG = re.compile(r"</[a-z0-9]+>")


class StreamingRenderer:
    """Renders a growing reply piece by piece, in time linear in its length.

    ``feed(piece)`` returns ``(appended_html, tail_html)``. ``appended_html`` holds
    the blocks that became complete with this piece: it goes after everything
    appended before and is never rendered again. ``tail_html`` shows the rest (the
    block still open) and replaces the previous tail.

    The text after the last complete block is kept and parsed as one piece. A
    top-level block is complete once a blank line follows it and then the first
    character of another top-level block, at the start of its line (and not a
    list marker that may continue a list): CommonMark's block parse never goes
    back over a block that a line has closed. So the appended HTML is exactly the
    beginning of ``render_markdown`` of the whole reply, except that a link to a
    reference defined further down stays text, and that blocks over ``MAX_TAIL``
    are cut (below).

    The open text is not rendered again for every piece, only when it has grown
    by ``GROWTH`` (at least ``MIN_STEP`` characters) since it last was, or when a
    new block seems to start; in between, the newest text is shown escaped at the
    end of the last rendered tail. So each block is rendered a bounded number of
    times its size, however small the pieces. A block longer than ``MAX_TAIL`` is
    cut at a line break (a code fence or table is reopened after the cut), so no
    flush carries much more than that, whatever the model writes.

    The tail is a preview: its code is not highlighted and its newest text may
    show raw Markdown. A finished message is rendered from its stored text by
    ``render_markdown``.
    """

    def __init__(self) -> None:
        self._open = ""  # the reply's text after its last complete block
        self._held_cr = False  # a "\r" that may be the first half of "\r\n"
        self._references: dict = {}  # link reference definitions in complete blocks
        self._appended: list[str] = []
        self._tail_html = ""  # sanitized HTML of self._open[: self._shown]
        self._slot = 0  # where in _tail_html text not rendered yet is shown
        self._shown = 0
        self._pending_from = 0  # where that text starts (before _shown: see _render)
        # The line scan that notices block starts: where it is, and what it saw.
        self._scanned = 0
        self._after_blank = False
        self._fence = ""  # marker of the code fence the scan is in, if any
        self._list_hint_wasted = False

    def feed(self, piece: str) -> tuple[str, str]:
        self._open += self._normalize(piece)
        reason = self._render_reason()
        if reason is None:
            return "", self._tail_with_pending()
        appended = self._render()
        if appended or reason == "list":
            # A list item after a blank line usually continues the list: after one
            # such render that completed nothing, the next ones wait for growth.
            self._list_hint_wasted = not appended
        return appended, self._tail_html

    def snapshot(self) -> tuple[str, str]:
        """(all HTML appended so far, the current tail): what a page that joins now needs."""
        self._appended = ["".join(self._appended)]
        return self._appended[0], self._tail_with_pending()

    # --- deciding when to render ------------------------------------------------------

    def _normalize(self, piece: str) -> str:
        # markdown-it reads "\r\n" and "\r" as "\n"; line offsets here must match its own.
        if self._held_cr:
            piece = "\r" + piece
        self._held_cr = piece.endswith("\r")
        if self._held_cr:
            piece = piece[:-1]
        return NEWLINES.sub("\n", piece) if "\r" in piece else piece

    def _render_reason(self) -> str | None:
        hint = self._scan()
        new = len(self._open) - self._shown
        if new == 0:
            return None
        if self._shown == 0 or new >= max(MIN_STEP, GROWTH * self._shown):
            return "growth"
        return hint

    def _scan(self) -> str | None:
        """Read the lines that arrived; say whether a new top-level block seems to start.

        That is a line whose first character came after the last render, at
        column 0, right after a blank line, outside a code fence: "block", or
        "list" when it may be one more item of a list before it.
        """
        text, hint = self._open, None
        while True:
            start = self._scanned
            end = text.find("\n", start)
            if start >= self._shown and start < len(text) and self._after_blank:
                first = text[start]
                if self._fence or first in " \t\n":
                    pass
                elif first not in LIST_MARKER_START:
                    hint = "block"
                elif hint is None and not self._list_hint_wasted:
                    hint = "list"
            if end < 0:
                return hint
            self._track(text[start:end])
            self._scanned = end + 1

    def _track(self, line: str) -> None:
        self._after_blank = not line.strip(" \t")
        fence = FENCE_LINE.match(line)
        if fence is None:
            return
        marker, rest = fence.groups()
        if not self._fence:
            if not (marker[0] == "`" and "`" in rest):  # ```x``` is inline code
                self._fence = marker
        elif marker[0] == self._fence[0] and len(marker) >= len(self._fence) and not rest.strip():
            self._fence = ""

    # --- rendering -------------------------------------------------------------------

    def _render(self) -> str:
        """Parse the open text once: append the blocks that are complete, show the rest."""
        env = {"references": dict(self._references)}
        tokens = _parse(self._open, env)
        appended = ""
        cut = self._commit_point(tokens, env)
        if cut is not None:
            index, offset, line = cut
            appended = _html(tokens[:index], env)
            self._keep_references(env, before_line=line)
            self._advance(offset)
            tokens = tokens[index:]
        elif len(self._open) > MAX_TAIL:
            appended = self._cut_long_block(tokens)
            env = {"references": dict(self._references)}
            tokens = _parse(self._open, env)
        if appended:
            self._appended.append(appended)
        self._tail_html = _html(tokens, env, streaming=True)
        self._slot = _pending_slot(self._tail_html)
        self._shown = len(self._open)
        # Markdown drops the whitespace that ends a paragraph (not code): the text
        # shown after it starts with that whitespace, or two words would run together.
        in_code = self._tail_html.startswith("</code>", self._slot)
        self._pending_from = self._shown if in_code else len(self._open.rstrip())
        return appended

    def _commit_point(self, tokens: list[Token], env: dict) -> tuple[int, int, int] | None:
        """The last top-level block start that closes every block before it for good.

        That is a block starting at column 0 right after a blank line. Returns
        (index of its first token, its offset in the open text, its line), or None.
        """
        text = self._open
        starts = _line_starts(text)
        unfinished = len(starts) - 1 if starts[-1] < len(text) else None
        if unfinished is not None and self._definition_reaches(env, unfinished):
            return None  # its URL or title may still grow, and earlier blocks may use it
        blocks = [(i, t) for i, t in enumerate(tokens) if t.level == 0 and t.nesting >= 0 and t.map]
        for (_, before), (index, token) in reversed(list(itertools.pairwise(blocks))):
            line = token.map[0]
            offset = starts[line]
            if text[starts[line - 1] : offset].strip(" \t\n") or text[offset] in " \t":
                continue
            # "- " or "2." just begun after a list may turn out to be its next item.
            if (
                line == unfinished
                and text[offset] in LIST_MARKER_START
                and before.type in ("bullet_list_open", "ordered_list_open")
            ):
                continue
            return index, offset, line
        return None

    def _definition_reaches(self, env: dict, line: int) -> bool:
        references = env.get("references", {})
        return any(
            label not in self._references and ref.get("map", (0, math.inf))[1] > line
            for label, ref in references.items()
        )

    def _keep_references(self, env: dict, before_line: float) -> None:
        for label, ref in env.get("references", {}).items():
            if label not in self._references and ref.get("map", (0, math.inf))[1] <= before_line:
                self._references[label] = ref

    def _cut_long_block(self, tokens: list[Token]) -> str:
        """Append most of an open block longer than MAX_TAIL.

        Not CommonMark-exact (the final render is): the block is cut after its
        last line break; a code fence or a table goes on after the cut under a
        copy of its opening line(s), as a second block.
        """
        text = self._open
        starts = _line_starts(text)
        low, reopen = 1, ""
        last = next((t for t in reversed(tokens) if t.level == 0 and t.map), None)
        if last is not None and last.type in ("fence", "table_open"):
            first, head = last.map[0], 1 if last.type == "fence" else 2
            if first + head < len(starts):
                low = starts[first + head]
                reopen = text[starts[first] : low]
        offset = _break_point(text, low)
        env = {"references": dict(self._references)}
        appended = _html(_parse(text[:offset], env), env)
        self._keep_references(env, before_line=math.inf)
        self._advance(offset, reopen)
        return appended

    def _advance(self, offset: int, reopen: str = "") -> None:
        """Drop the appended text; the line scan starts again at a block start."""
        self._open = reopen + self._open[offset:]
        self._scanned, self._after_blank, self._fence = 0, False, ""

    def _tail_with_pending(self) -> str:
        if len(self._open) == self._shown:
            return self._tail_html
        pending = self._open[self._pending_from :]
        tail, slot = self._tail_html, self._slot
        return f'{tail[:slot]}<span class="md-pending">{html.escape(pending)}</span>{tail[slot:]}'


def _line_starts(text: str) -> list[int]:
    starts, at = [0], text.find("\n")
    while at >= 0:
        starts.append(at + 1)
        at = text.find("\n", at + 1)
    return starts


def _pending_slot(markup: str) -> int:
    """Where text typed after the rendered tail belongs: inside its last open element.

    That is before the closing tags that end it, so the newest words go on in the
    same paragraph, list item, table cell or code block.
    """
    slot = end = len(markup)
    while True:
        while end and markup[end - 1].isspace():  # between closing tags
            end -= 1
        start = markup.rfind("<", 0, end)
        # Whole closing tags only: a "<" may also sit in an attribute value (a title).
        if start < 0 or not CLOSING_TAG.fullmatch(markup, start, end):
            return slot
        slot = end = start


def _break_point(text: str, low: int) -> int:
    """Where to cut a long block: after its last line break, else its last space."""
    for separator in ("\n", " "):
        at = text.rfind(separator, low)
        if at >= low:
            return at + 1
    return len(text)


# --- fragments: each one a partial of the page template ---------------------


@functools.cache
def _template(name: str):
    # Looked up once: a frame is pushed many times a second.
    return get_template(f"{PAGE}#{name}")


def _partial(name: str, context: dict) -> str:
    return _template(name).render(context)


def message_html(message, **context) -> str:
    """The whole turn of a message, exactly as the page renders it."""
    return _partial("message", {"message": message, **context})


def footer_html(message, notice: str = "") -> str:
    """The line under a reply: streaming indicator, retry notice, how it ended, usage."""
    return _partial("footer", {"message": message, "notice": notice})


def delta_html(message_id: int, appended: str, tail: str, *, reasoning: bool = False) -> str:
    """Extends a streaming message (or its reasoning) in place: finished blocks appended,
    the tail replaced.

    The tail element is always sent, even empty: a tail whose block has just
    moved into the appended text must be emptied.
    """
    ids = MessageIds(message_id)
    if reasoning:
        values = (ids.reasoning_text, appended, tail, ids.reasoning_tail, "reasoning-tail markdown")
    else:
        values = (ids.text, appended, tail, ids.tail, "message-tail markdown")
    pieces = _delta_pieces(bool(appended))
    return "".join(values[int(p)] if i % 2 else p for i, p in enumerate(pieces))


@functools.cache
def _delta_pieces(appending: bool) -> list[str]:
    """The delta partial rendered once with markers for its values, cut at the markers.

    A reply sends dozens of frames a second; filling the pieces in costs a
    microsecond, the template engine about twenty.
    """
    mark = "\0{}\0".format  # NUL never occurs in the partial's own markup
    names = ("text_id", "appended", "tail", "tail_id", "tail_class")
    marked = {name: mark(i) for i, name in enumerate(names)}
    if not appending:
        marked["appended"] = ""
    return _partial("delta", marked).split("\0")


def reasoning_html(message, rendered: str = "", tail: str = "") -> str:
    """The whole reasoning block of a reply (it replaces the empty one at the first token)."""
    context = {"message": message, "reasoning_rendered": rendered, "reasoning_tail": tail}
    return _partial("reasoning", context)


def tools_html(message) -> str:
    """The reply's tool calls, each with its arguments, state and result."""
    return _partial("tools", {"message": message})


def settings_html(conversation, form, saved: str = "", opened: bool = False) -> str:
    """The conversation's settings form: its model picker, and behind "Settings" its
    system prompt and parameters."""
    context = {"conversation": conversation, "settings_form": form, "saved": saved}
    return _partial("settings", {**context, "settings_opened": opened})


def tools_panel_html(conversation, panel: dict) -> str:
    """A conversation's Tools panel (see ``tool_calls.tool_panel``)."""
    return _partial("tools_panel", {"conversation": conversation, **panel})


def thought_html(message) -> str:
    """The reasoning block's summary line: "Thinking…", then "Thought for N s"."""
    return _partial("thought", {"message": message})


def started_html(started) -> str:
    """What puts a reply that starts on the page (a ``models.StartedReply``)."""
    html = removed_html(started.removed)
    if started.added:
        html += _partial("added", {"messages": started.added})
    else:  # continued: the same message, streaming again
        html += message_html(started.reply)
    if started.retitled is not None:
        html += _partial("retitled", {"conversation": started.retitled})
    return html


def removed_html(message_ids) -> str:
    """Takes deleted messages off the page."""
    return "".join(_partial("removed", {"ids": MessageIds(pk)}) for pk in message_ids)


def switched_frames(switch) -> list[str]:
    """Another version of a turn on the page (a ``models.BranchSwitch``): the turns of the
    branch shown before it go, those of the new one follow what stays."""
    frames = list(added_frames(switch.added)) or [""]
    frames[0] = removed_html(switch.removed) + frames[0]  # in one swap with what replaces it
    return frames


def added_html(messages) -> str:
    """New messages at the end of the conversation."""
    return _partial("added", {"messages": messages})


# Daphne refuses to send a websocket message over 1 MiB (its websocket_max_message_size,
# which autobahn applies to what it sends too): a long history goes in frames under this.
FRAME_BUDGET_BYTES = 512 * 1024


def added_frames(messages, budget: int = FRAME_BUDGET_BYTES):
    """``added_html`` in frames of at most ``budget`` bytes each (a single message larger
    than that goes alone), in order."""
    frame, size = [], 0
    for message in messages:
        html = added_html([message])
        length = len(html.encode())
        if frame and size + length > budget:
            yield "".join(frame)
            frame, size = [], 0
        frame.append(html)
        size += length
    if frame:
        yield "".join(frame)


def notice_html(text: str, level: str = "error", refused: str = "") -> str:
    """A message about the socket itself (bad frame, refused send), shown above the composer.

    ``refused="send"`` tells the page its last message was not taken, so it
    puts the text back in the composer.
    """
    return _partial("notice", {"notice": text, "level": level, "refused": refused})


def created_html(conversation, form, csrf_token: str = "") -> str:
    """A new page's conversation, just stored by its first message: its heading and
    controls, its link in the list, and its address (chat.js puts it in the location)."""
    context = {"conversation": conversation, "settings_form": form, "csrf_token": csrf_token}
    return _partial("created", context)


def retitled_html(conversation) -> str:
    """The conversation's new title in its heading and its link in the list."""
    return _partial("retitled", {"conversation": conversation})
