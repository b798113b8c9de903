"""What real servers stream, replayed over loopback HTTP through stream_chat.

One fixture per server (or per shape a server is known for), each drawn from
the server's documentation or issue tracker, named in the comment above it;
../shared/PROVIDERS.md has the overview. Every fixture is served twice: one
write per event, and one write per byte. Both must give the same events, and
they must fold into the expected (reasoning, answer, finish_reason, usage).
"""

import asyncio
import json
from dataclasses import dataclass

import pytest

from conversations import upstream
from conversations.demo import ChatCompletionsServer
from conversations.upstream import (
    Finish,
    ReasoningDelta,
    RefusalDelta,
    StreamError,
    TextDelta,
    TextWasReasoning,
    ToolCallDelta,
    UpstreamError,
    Usage,
    stream_chat,
)

MESSAGES = [{"role": "user", "content": "Hello"}]


@dataclass(frozen=True)
class Case:
    events: list[bytes]  # the body, one SSE event (or comment) each
    reasoning: str
    answer: str
    finish: str | None
    usage: Usage | None
    error: str = ""  # the StreamError the stream ends with, if any


def body(*items, done: bool = True) -> list[bytes]:
    """Events as servers write them: compact JSON, raw non-ASCII; a str is a comment line."""
    events = []
    for item in items:
        if isinstance(item, str):
            events.append(f"{item}\n\n".encode())
        else:
            data = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
            events.append(f"data: {data}\n\n".encode())
    if done:
        events.append(b"data: [DONE]\n\n")
    return events


def chunks(**base):
    """A maker of one server's chunks: ``base`` fields on every chunk."""

    def make(delta=None, finish=None, *, choice=None, choices=None, **fields):
        if choices is None:
            one = {"index": 0, "delta": {} if delta is None else delta, **(choice or {})}
            choices = [{**one, "finish_reason": finish}]
        return {**base, "choices": choices, **fields}

    return make


def fold(events: list) -> tuple:
    """Events into (reasoning, answer, finish_reason, usage), as the reply keeps them."""
    reasoning = answer = ""
    finish = usage = None
    for event in events:
        match event:
            case ReasoningDelta(text):
                reasoning += text
            case TextDelta(text) | RefusalDelta(text):
                answer += text
            case TextWasReasoning():
                reasoning, answer = reasoning + answer, ""
            case Finish(reason):
                finish = reason
            case Usage():
                usage = event
            case ToolCallDelta():
                pass
    return reasoning, answer, finish, usage


CASES: dict[str, Case] = {}


def case(name: str, events: list[bytes], *expected, error: str = "") -> None:
    CASES[name] = Case(events, *expected, error=error)


# OpenAI, gpt-4o-mini with logprobs and stream_options.include_usage: "usage": null on
# every chunk, then a last chunk with "choices": [] (platform.openai.com/docs/api-reference/
# chat-streaming; the same fields in coder's recorded stream, aibridge/fixtures/openai/
# chatcompletions/stream_error.txtar). A lone "<" token waits for the next one.
openai = chunks(
    id="chatcmpl-BwoiPTGRbKkY5rncfaM0s9KtWrq5N",
    object="chat.completion.chunk",
    created=1753357673,
    model="gpt-4o-mini-2024-07-18",
    service_tier="default",
    system_fingerprint="fp_51e1070cf2",
)


def logprobs(token: str) -> dict:
    entry = {"token": token, "logprob": -0.0001, "bytes": list(token.encode())}
    return {"logprobs": {"content": [{**entry, "top_logprobs": [entry]}], "refusal": None}}


case(
    "openai",
    body(
        openai(
            {"role": "assistant", "content": "", "refusal": None},
            choice={"logprobs": {"content": [], "refusal": None}},
            usage=None,
        ),
        *(
            openai({"content": token}, choice=logprobs(token), usage=None)
            for token in ("Hello", "!", " 2", " <", " 3", ",", " naïve", " café", " 😀", ".")
        ),
        openai({}, "stop", choice={"logprobs": None}, usage=None),
        openai(
            choices=[],
            usage={
                "prompt_tokens": 19,
                "completion_tokens": 10,
                "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
        ),
    ),
    "",
    "Hello! 2 < 3, naïve café 😀.",
    "stop",
    Usage(19, 10, 29, 0),
)

# OpenAI reasoning models (o-series, gpt-5): the reasoning is never streamed, only
# counted in usage.completion_tokens_details.reasoning_tokens (platform.openai.com/docs/
# guides/reasoning); shape of a recorded gpt-5-nano stream.
gpt5 = chunks(
    created=1762317021,
    id="chatcmpl-CYPS1lijGoK8gd9lYzY3r9Sx50nbt",
    model="gpt-5-nano-2025-08-07",
    object="chat.completion.chunk",
)
case(
    "openai-reasoning-tokens",
    body(
        gpt5({"content": "", "refusal": None, "role": "assistant"}),
        gpt5({"content": "Copenhagen"}),
        gpt5({"content": ", Denmark"}),
        gpt5({"content": "."}),
        gpt5({}, "stop"),
        gpt5(
            choices=[],
            usage={
                "completion_tokens": 78,
                "completion_tokens_details": {
                    "accepted_prediction_tokens": 0,
                    "reasoning_tokens": 64,
                    "rejected_prediction_tokens": 0,
                },
                "prompt_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 0},
                "total_tokens": 93,
            },
        ),
    ),
    "",
    "Copenhagen, Denmark.",
    "stop",
    Usage(15, 78, 93, 64),
)

# DeepSeek API, deepseek-reasoner: reasoning_content while content is null, then content
# with reasoning_content null (api-docs.deepseek.com/guides/reasoning_model); keep-alive
# comments while busy (api-docs.deepseek.com/quick_start/rate_limit); the finish chunk
# carries the usage, with DeepSeek's cache counters (Portkey-AI/gateway#858).
deepseek = chunks(
    id="577145fa-34cb-4cc4-b937-6f8e03eafa79",
    object="chat.completion.chunk",
    created=1736355607,
    model="deepseek-reasoner",
    system_fingerprint="fp_7e73fd9a08_prod0225",
)
case(
    "deepseek",
    body(
        ": keep-alive",
        deepseek(
            {"role": "assistant", "content": None, "reasoning_content": ""},
            choice={"logprobs": None},
        ),
        *(
            deepseek({"content": None, "reasoning_content": text}, choice={"logprobs": None})
            for text in ("9.11", " and", " 9.8", ": compare", " the tenths", ".")
        ),
        *(
            deepseek({"content": text, "reasoning_content": None}, choice={"logprobs": None})
            for text in ("9.8", " is", " greater", ".")
        ),
        deepseek(
            {"content": "", "reasoning_content": None},
            "stop",
            choice={"logprobs": None},
            usage={
                "prompt_tokens": 18,
                "completion_tokens": 240,
                "total_tokens": 258,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 196},
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 18,
            },
        ),
    ),
    "9.11 and 9.8: compare the tenths.",
    "9.8 is greater.",
    "stop",
    Usage(18, 240, 258, 196),
)

# vLLM since late 2025, --reasoning-parser qwen3: delta.reasoning (vllm-project/vllm#27752,
# reasoning_content removed in #33402; docs.vllm.ai/en/latest/features/reasoning_outputs),
# stop_reason beside finish_reason, usage last with "choices": []. The answer keeps the
# newlines the parser leaves after </think>.
vllm = chunks(
    id="chatcmpl-9f0c2e6d8b1a4c55",
    object="chat.completion.chunk",
    created=1764000000,
    model="Qwen/Qwen3-8B",
)
case(
    "vllm",
    body(
        vllm({"role": "assistant", "content": ""}, choice={"logprobs": None}),
        *(
            vllm({"reasoning": text}, choice={"logprobs": None})
            for text in ("Okay", ",", " the user", " says", " hi", ".\n")
        ),
        *(
            vllm({"content": text}, choice={"logprobs": None})
            for text in ("\n\n", "Hello", "!", " How", " can I help?")
        ),
        vllm({"content": ""}, "stop", choice={"logprobs": None, "stop_reason": None}),
        vllm(
            choices=[],
            usage={
                "prompt_tokens": 12,
                "total_tokens": 48,
                "completion_tokens": 36,
                "prompt_tokens_details": None,
            },
        ),
    ),
    "Okay, the user says hi.\n",
    "\n\nHello! How can I help?",
    "stop",
    Usage(12, 36, 48),
)

# Servers and proxies that send the old and the new name together, the same text in
# both (the mirror proposed in vllm-project/vllm#34030; ModelTC/LightLLM#1345 fixed
# exactly that duplicate): read once.
case(
    "reasoning-in-two-fields",
    body(
        vllm({"role": "assistant", "content": ""}),
        *(
            vllm({"reasoning": text, "reasoning_content": text})
            for text in ("Two", " fields", ", one", " thought.")
        ),
        vllm({"content": "Done.", "reasoning": None, "reasoning_content": None}),
        vllm({}, "stop"),
    ),
    "Two fields, one thought.",
    "Done.",
    "stop",
    None,
)

# Ollama's /v1 endpoint: delta.reasoning beside an empty content (raw SSE from Ollama
# 0.34.2 in dirac-run/dirac#227; anomalyco/opencode#46061); native /api/chat says
# "thinking" instead. Usage on its own chunk since ollama/ollama#4448.
ollama = chunks(
    id="chatcmpl-405",
    object="chat.completion.chunk",
    created=1758000000,
    model="qwen3:8b",
    system_fingerprint="fp_ollama",
)
case(
    "ollama",
    body(
        ollama({"role": "assistant", "content": "", "reasoning": "We"}),
        *(
            ollama({"role": "assistant", "content": "", "reasoning": text})
            for text in (" need", " to", " greet", " back", ".")
        ),
        ollama({"role": "assistant", "content": "Hi"}),
        ollama({"role": "assistant", "content": "!"}),
        ollama({"role": "assistant", "content": ""}, "stop"),
        ollama(
            choices=[], usage={"prompt_tokens": 11, "completion_tokens": 25, "total_tokens": 36}
        ),
    ),
    "We need to greet back.",
    "Hi!",
    "stop",
    Usage(11, 25, 36),
)

# llama.cpp server with --reasoning-format none: the model's own <think> tags in content,
# the closing tag split over three tokens as GGUF vocabularies without it as one token
# do (ggml-org/llama.cpp#12107 for the chunk shape); usage and timings ride on the
# finish chunk.
TIMINGS = {"prompt_n": 9, "prompt_ms": 40.1, "predicted_n": 14, "predicted_ms": 210.7}
llamacpp = chunks(
    created=1740734647,
    id="chatcmpl-huCXGDWAI250H1Sid6SfwT2F6QcrjN8p",
    model="DeepSeek-R1-Distill-Qwen-14B-Q4_K_M.gguf",
    system_fingerprint="b4790-438a8392",
    object="chat.completion.chunk",
)
case(
    "llama.cpp-inline-think",
    body(
        llamacpp({"role": "assistant", "content": None}),
        *(
            llamacpp({"content": text})
            for text in (
                "<think>",
                "\n",
                "Okay",
                ",",
                " hello",
                " in",
                " French",
                ".\n",
                "</",
                "think",
                ">\n\n",
                "Bonjour",
                " !",
            )
        ),
        llamacpp(
            {},
            "stop",
            usage={"completion_tokens": 14, "prompt_tokens": 9, "total_tokens": 23},
            timings=TIMINGS,
        ),
    ),
    "Okay, hello in French.\n",
    "Bonjour !",
    "stop",
    Usage(9, 14, 23),
)

# llama.cpp server with --reasoning-format deepseek (the default): reasoning_content,
# content null while it reasons (ggml-org/llama.cpp#13867; chunks with timings as in
# openai-php/client#780, a Gemma GGUF).
gemma = chunks(
    created=1781492230,
    id="chatcmpl-qC6laQHbZ2CmxNvJ4NoB1L93LcVF7nfe",
    model="gemma-4-31B-it-UD-Q6_K_XL.gguf",
    system_fingerprint="b9554-d403f00ec",
    object="chat.completion.chunk",
)
case(
    "llama.cpp-reasoning-content",
    body(
        gemma({"role": "assistant", "content": None}, timings=TIMINGS),
        *(
            gemma({"reasoning_content": text}, timings=TIMINGS)
            for text in ("The", " user", " asks", " how", " it", " handles", " a", " split.")
        ),
        *(gemma({"content": text}, timings=TIMINGS) for text in ("It", " waits", ".")),
        gemma(
            {},
            "stop",
            usage={"completion_tokens": 11, "prompt_tokens": 10, "total_tokens": 21},
            timings=TIMINGS,
        ),
    ),
    "The user asks how it handles a split.",
    "It waits.",
    "stop",
    Usage(10, 11, 21),
)

# DeepSeek-R1 distills behind a chat template that ends the prompt with <think>: the
# stream has only the closing tag (vllm-project/vllm#12999, deepseek-ai/DeepSeek-R1#352;
# the "\n</think>" chunk as ik_llama.cpp sends it, ikawrakow/ik_llama.cpp#690).
r1 = chunks(
    created=1755270471,
    id="chatcmpl-NoGZgwcGTg738xJiR2ne05HAx53rcSVG",
    model="deepseek-r1",
    object="chat.completion.chunk",
)
case(
    "deepseek-r1-closing-tag-only",
    body(
        *(
            r1({"content": text}, timings=TIMINGS)
            for text in ("Okay", ",", " a", " greeting", ".", "\n</think>", "\n\n", "Hello", "!")
        ),
        r1({}, "stop", usage={"completion_tokens": 9, "prompt_tokens": 7, "total_tokens": 16}),
    ),
    "Okay, a greeting.\n",
    "Hello!",
    "stop",
    Usage(7, 9, 16),
)

# OpenRouter, an Anthropic model with reasoning: ": OPENROUTER PROCESSING" comments
# (openrouter.ai/docs/api-reference/streaming), delta.reasoning and the same text again in
# reasoning_details, an empty reasoning.text carrying the signature, and a
# reasoning.encrypted entry (openrouter.ai/docs/use-cases/reasoning-tokens; recorded
# streams in charmbracelet/fantasy, providertests/testdata/TestOpenRouterThinking).
openrouter = chunks(
    id="gen-1773326264-OoghvABlt3eLCw2WPlqS",
    object="chat.completion.chunk",
    created=1773326264,
    model="anthropic/claude-4-sonnet-20250522",
    provider="Google",
)
NATIVE = {"native_finish_reason": None}
CLAUDE = {"type": "reasoning.text", "format": "anthropic-claude-v1", "index": 0}


def thought(text: str | None, *details) -> dict:
    return {
        "content": "",
        "role": "assistant",
        "reasoning": text,
        "reasoning_details": list(details),
    }


case(
    "openrouter",
    body(
        ": OPENROUTER PROCESSING",
        ": OPENROUTER PROCESSING",
        openrouter(thought(None), choice=NATIVE),
        openrouter(thought(None, {**CLAUDE, "text": "", "signature": ""}), choice=NATIVE),
        *(
            openrouter(thought(text, {**CLAUDE, "text": text}), choice=NATIVE)
            for text in ("The user is asking for", " weather", " in Florence.")
        ),
        openrouter(
            thought(None, {**CLAUDE, "text": "", "signature": "EqQBCkYIBxgCKkBX"}), choice=NATIVE
        ),
        openrouter(
            thought(None, {"type": "reasoning.encrypted", "data": "EmwKAhgBEgy3", "index": 1}),
            choice=NATIVE,
        ),
        *(
            openrouter({"content": text, "role": "assistant"}, choice=NATIVE)
            for text in ("I'll", " check", " the weather", ".")
        ),
        openrouter(
            {"content": "", "role": "assistant"},
            "stop",
            choice={"native_finish_reason": "end_turn"},
        ),
        openrouter(
            choices=[],
            usage={
                "prompt_tokens": 40,
                "completion_tokens": 60,
                "total_tokens": 100,
                "cost": 0.00102,
                "is_byok": False,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 45},
            },
        ),
    ),
    "The user is asking for weather in Florence.",
    "I'll check the weather.",
    "stop",
    Usage(40, 60, 100, 45),
)

# OpenRouter, an OpenAI model: reasoning.summary entries repeated in delta.reasoning,
# then an encrypted entry with reasoning null (charmbracelet/fantasy's recorded
# TestOpenRouterCommon/gpt-5/simple_streaming.yaml).
openrouter_openai = chunks(
    id="gen-1761054229-W3eLfNtiq5pKCuUI7w88",
    provider="OpenAI",
    model="openai/gpt-5",
    object="chat.completion.chunk",
    created=1761054229,
)
SUMMARY = {"type": "reasoning.summary", "format": "openai-responses-v1", "index": 0}
case(
    "openrouter-summary",
    body(
        openrouter_openai({"role": "assistant", "content": ""}, choice=NATIVE),
        *(
            openrouter_openai(thought(text, {**SUMMARY, "summary": text}), choice=NATIVE)
            for text in ("**Respond", "ing", " in Portuguese**")
        ),
        openrouter_openai(
            thought(
                None,
                {
                    "type": "reasoning.encrypted",
                    "data": "gAAAAABo95AdNmqxM6HBeqh0dzQ",
                    "format": "openai-responses-v1",
                    "index": 0,
                },
            ),
            choice=NATIVE,
        ),
        openrouter_openai({"role": "assistant", "content": "Olá!"}, choice=NATIVE),
        openrouter_openai(
            {"role": "assistant", "content": ""},
            "stop",
            choice={"native_finish_reason": "completed"},
        ),
    ),
    "**Responding in Portuguese**",
    "Olá!",
    "stop",
    None,
)

# OpenRouter's error once the stream has started: HTTP 200, a chunk with a top-level error
# object and finish_reason "error" (openrouter.ai/docs/api-reference/streaming, "Handling
# errors during streaming").
case(
    "openrouter-error-mid-stream",
    body(
        ": OPENROUTER PROCESSING",
        openrouter({"content": "Half an", "role": "assistant"}, choice=NATIVE),
        openrouter({"content": " answer", "role": "assistant"}, choice=NATIVE),
        {
            "id": "cmpl-abc123",
            "object": "chat.completion.chunk",
            "created": 1234567890,
            "model": "gpt-3.5-turbo",
            "provider": "openai",
            "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        },
        done=False,
    ),
    "",
    "Half an answer",
    None,
    None,
    error="Provider disconnected unexpectedly",
)

# Groq, reasoning_format "parsed": delta.reasoning (console.groq.com/docs/reasoning);
# x_groq on the first and last chunks, the usage only in x_groq as Groq sent it before
# stream_options (vercel/ai#1651).
groq = chunks(
    id="chatcmpl-8566e76f-7ded-47d7-a2ca-d212098af00c",
    object="chat.completion.chunk",
    created=1716131679,
    model="qwen/qwen3-32b",
    system_fingerprint="fp_179b0f92c9",
)
case(
    "groq-parsed",
    body(
        groq(
            {"role": "assistant", "content": ""},
            choice={"logprobs": None},
            x_groq={"id": "req_01hy8ppkajfqk987jv2vx88m9r"},
        ),
        *(
            groq({"reasoning": text}, choice={"logprobs": None})
            for text in ("Simple", " math", ":", " 4", ".")
        ),
        groq({"content": "2 + 2 = 4."}, choice={"logprobs": None}),
        groq(
            {},
            "stop",
            choice={"logprobs": None},
            x_groq={
                "id": "req_01hy8ppkajfqk987jv2vx88m9r",
                "usage": {
                    "queue_time": 0.07535312,
                    "prompt_tokens": 23,
                    "prompt_time": 0.006,
                    "completion_tokens": 19,
                    "completion_time": 0.022,
                    "total_tokens": 42,
                    "total_time": 0.028,
                },
            },
        ),
    ),
    "Simple math: 4.",
    "2 + 2 = 4.",
    "stop",
    Usage(23, 19, 42),
)

# Groq, reasoning_format "raw": the <think> block inside content (console.groq.com/docs/
# reasoning); with stream_options the usage comes on an extra chunk of its own
# (Portkey-AI/gateway#1338).
case(
    "groq-raw",
    body(
        groq({"role": "assistant", "content": ""}, choice={"logprobs": None}),
        *(
            groq({"content": text}, choice={"logprobs": None})
            for text in ("<think>", "\n", "Simple", " math", ".\n", "</think>", "\n\n", "4", ".")
        ),
        groq({}, "stop", choice={"logprobs": None}),
        groq(
            choices=[],
            usage={"prompt_tokens": 23, "completion_tokens": 12, "total_tokens": 35},
            x_groq={"id": "req_01k4xf1zq3e8v9t6w2m5n7b0yd"},
        ),
    ),
    "Simple math.\n",
    "4.",
    "stop",
    Usage(23, 12, 35),
)

# Mistral, magistral-medium: content as a list of parts, the thinking nested in "thinking"
# parts, then text parts and plain strings (BerriAI/litellm#16272 for the streamed chunks;
# docs.mistral.ai/capabilities/reasoning); usage on the finish chunk.
magistral = chunks(
    id="c3c77283055240cbbaf6f01d384cfccb",
    object="chat.completion.chunk",
    created=1762355135,
    model="magistral-medium-2509",
)


def thinking(text: str, **extra) -> dict:
    return {
        "content": [{"type": "thinking", "thinking": [{"type": "text", "text": text}], **extra}]
    }


case(
    "mistral-magistral",
    body(
        magistral({"role": "assistant", "content": ""}),
        *(
            magistral(thinking(text))
            for text in ("Okay", ", the user", "'s a greeting", ", I should", " return", " one.")
        ),
        magistral(thinking("", closed=True)),
        magistral({"content": [{"type": "text", "text": "Hello"}]}),
        magistral({"content": "!"}),
        magistral({"content": " How can I help?"}),
        magistral(
            {"content": ""},
            "stop",
            usage={"prompt_tokens": 8, "total_tokens": 58, "completion_tokens": 50},
        ),
    ),
    "Okay, the user's a greeting, I should return one.",
    "Hello! How can I help?",
    "stop",
    Usage(8, 50, 58),
)

# Azure OpenAI: first a chunk without choices holding prompt_filter_results, then
# content_filter_results on every choice (microsoft/autogen#6465,
# AbanteAI/archive-old-cli-mentat#429, langchain4j/langchain4j#2385); with the
# asynchronous filter a last choice without delta, with content_filter_offsets
# (langchain-ai/langchain#18977, openai/openai-python#1677).
SAFE = {"filtered": False, "severity": "safe"}
FILTERS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
azure = chunks(
    created=1736407895,
    id="chatcmpl-AnhIt2rw8vL8czymkCwEOKKTg7HPc",
    model="gpt-4o-mini-2024-07-18",
    object="chat.completion.chunk",
    system_fingerprint="fp_5154047bf2",
)
case(
    "azure",
    body(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [
                {
                    "prompt_index": 0,
                    "content_filter_results": {
                        **FILTERS,
                        "jailbreak": {"filtered": False, "detected": False},
                    },
                }
            ],
        },
        azure(
            {"content": "", "refusal": None, "role": "assistant"},
            choice={"content_filter_results": {}, "logprobs": None},
        ),
        *(
            azure({"content": text}, choice={"content_filter_results": FILTERS, "logprobs": None})
            for text in ("-", " Current", " date", ":", " unknown", ".")
        ),
        azure({}, "stop", choice={"content_filter_results": {}, "logprobs": None}),
        {
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": None,
                    "content_filter_results": FILTERS,
                    "content_filter_offsets": {
                        "check_offset": 35,
                        "start_offset": 35,
                        "end_offset": 198,
                    },
                }
            ],
            "usage": None,
        },
        azure(choices=[], usage={"completion_tokens": 7, "prompt_tokens": 30, "total_tokens": 37}),
    ),
    "",
    "- Current date: unknown.",
    "stop",
    Usage(30, 7, 37),
)

# Azure OpenAI, older API versions: "prompt_annotations" instead of prompt_filter_results,
# "usage": null on every chunk, no usage chunk (openai/openai-python#1677).
case(
    "azure-prompt-annotations",
    body(
        {
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "prompt_annotations": [{"prompt_index": 0, "content_filter_results": FILTERS}],
            "choices": [],
            "usage": None,
        },
        *(
            {
                "id": "chatcmpl-7rCNsVeZy0PGnX3H6jK8STps5nZUY",
                "object": "chat.completion.chunk",
                "created": 1692913344,
                "model": "gpt-35-turbo",
                "choices": [{"index": 0, "finish_reason": finish, "delta": delta}],
                "usage": None,
            }
            for delta, finish in (
                ({"role": "assistant"}, None),
                ({"content": "Color"}, None),
                ({"content": " is"}, None),
                ({"content": " light"}, None),
                ({}, "stop"),
            )
        ),
    ),
    "",
    "Color is light",
    "stop",
    None,
)

# Gemini behind an OpenAI-compatible gateway: the last text arrives with finishReason
# STOP, so the finish_reason rides on the chunk with the last content
# (envoyproxy/ai-gateway#2107).
gemini = chunks(
    created=1746000000,
    id="Kq4LaJ7mHoTtz7IPt5ic2Qo",
    model="gemini-2.5-flash",
    object="chat.completion.chunk",
)
case(
    "finish-with-last-content",
    body(
        gemini({"content": "The capital of France", "role": "assistant"}),
        gemini({"content": " is Paris, not <", "role": "assistant"}),
        gemini({"content": "b>Lyon</b>.", "role": "assistant"}, "stop"),
        gemini(choices=[], usage={"completion_tokens": 12, "prompt_tokens": 7, "total_tokens": 19}),
    ),
    "",
    "The capital of France is Paris, not <b>Lyon</b>.",
    "stop",
    Usage(7, 12, 19),
)

# Gateways that set finish_reason "stop" on every chunk, reasoning chunks included
# (su-kaka/gcli2api#403; BerriAI/litellm#2195 for Vertex/Gemini).
gcli = chunks(id="chatcmpl-gcli", object="chat.completion.chunk", model="gemini-3.7-flash-high")
case(
    "finish-on-every-chunk",
    body(
        gcli({"reasoning_content": "17*23 = 391; +45"}, "stop"),
        gcli({"reasoning_content": " = 436."}, "stop"),
        gcli({"content": "<thi"}, "stop"),  # the finish ends what could have been a tag
        gcli({"content": "nk> 436"}, "stop"),
    ),
    "17*23 = 391; +45 = 436.",
    "<think> 436",
    "stop",
    None,
)

# A server that ends the stream after the finish chunk without "data: [DONE]"
# (ikawrakow/ik_llama.cpp#467): complete, not interrupted.
case(
    "no-done",
    body(
        llamacpp({"role": "assistant", "content": None}),
        llamacpp({"content": "Short"}),
        llamacpp({"content": " answer."}),
        llamacpp(
            {}, "length", usage={"completion_tokens": 2, "prompt_tokens": 5, "total_tokens": 7}
        ),
        done=False,
    ),
    "",
    "Short answer.",
    "length",
    Usage(5, 2, 7),
)


# --- replaying them ----------------------------------------------------------


@pytest.fixture
async def serve():
    servers = []

    async def start(handler) -> ChatCompletionsServer:
        server = await ChatCompletionsServer(handler).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def client():
    http = upstream.new_client()
    yield http
    await http.aclose()


async def replay(serve, client, events: list[bytes], *, bytewise: bool):
    """The events stream_chat yields for ``events``, and the error it raised (or None)."""

    async def handler(exchange):
        await exchange.start()
        if not bytewise:
            for event in events:
                await exchange.write(event)
            return
        data = b"".join(events)
        for i in range(len(data)):
            await exchange.write(data[i : i + 1])  # one HTTP chunk per byte
            await asyncio.sleep(0)  # and the client's turn to read it

    server = await serve(handler)
    received = []
    try:
        async for event in stream_chat(
            server.base_url, client=client, model="test-model", messages=MESSAGES
        ):
            received.append(event)
    except UpstreamError as error:
        return received, error
    return received, None


@pytest.mark.parametrize("name", CASES)
async def test_provider(serve, client, name):
    expected = CASES[name]
    events, error = await replay(serve, client, expected.events, bytewise=False)
    assert fold(events) == (expected.reasoning, expected.answer, expected.finish, expected.usage)
    assert all(event.text for event in events if hasattr(event, "text")), "an empty delta"
    if expected.error:
        assert type(error) is StreamError
        assert expected.error in str(error)
    else:
        assert error is None, error
    bytewise = await replay(serve, client, expected.events, bytewise=True)
    assert bytewise[0] == events
    assert str(bytewise[1]) == str(error)


def test_the_corpus_covers_every_shape():
    """Each shape PROVIDERS.md lists is in some fixture's body."""
    corpus = b"".join(b"".join(case.events) for case in CASES.values())
    for shape in (
        b'"reasoning_content":"',
        b'"reasoning":"',
        b'"reasoning_details":[{"type":"reasoning.text"',
        b'"type":"reasoning.summary"',
        b'"type":"reasoning.encrypted"',
        b'"type":"thinking"',
        b"<think>",
        b"</think>",
        b'"prompt_filter_results"',
        b'"content_filter_results"',
        b'"logprobs":{',
        b'"choices":[]',
        b'"reasoning_tokens":',
        b'"x_groq"',
        b'"error":{',
    ):
        assert shape in corpus, shape
