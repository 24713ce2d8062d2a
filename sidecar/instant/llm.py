"""The optional LLM: it may only fill an `InstantQuery` (schemas/instant.py) as JSON, which pydantic validates.

AudioMuse-AI's instant chat asks an LLM to write SQL and runs it under a restricted role. Here nothing the LLM
writes is executed: its answer is a query of closed vocabularies, numbers and words, or it is refused with a
short reason (not configured, unreachable, not JSON, not the schema) and the rules' parse is used. The LLM's
URL comes from the settings (SIDECAR_LLM_URL, _MODEL, _API_KEY, _API, _TIMEOUT_S), never from the request.
"""
from __future__ import annotations

import asyncio
import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import ValidationError

from schemas.instant import InstantQuery
from sidecar.instant.parser import parse_instant
from sidecar.text.vocabulary import DESCRIPTORS, MSD_TAGS

if TYPE_CHECKING:
    from sidecar.config import Settings


@dataclass
class LlmConfig:
    url: str
    model: str
    api_key: str = ""
    api: str = "openai"  # "openai": /v1/chat/completions; "ollama": /api/chat
    timeout_s: float = 30.0


def llm_config(settings: "Settings") -> LlmConfig | None:
    """From the settings; None when no URL is set."""
    url = settings.llm_url.strip()
    if not url:
        return None
    return LlmConfig(
        url=url, model=settings.llm_model, api_key=settings.llm_api_key, api=settings.llm_api, timeout_s=settings.llm_timeout_s,
    )


def chat_url(cfg: LlmConfig) -> str:
    """The chat endpoint of the configured base URL (which may already name it)."""
    base = cfg.url.rstrip("/")
    if cfg.api == "ollama":
        return base if base.endswith("/api/chat") else base + "/api/chat"
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


@functools.lru_cache(maxsize=1)
def system_prompt() -> str:
    schema = json.dumps(InstantQuery.model_json_schema(), separators=(",", ":"))
    examples = "\n".join(
        f"Request: {s}\nAnswer: {parse_instant(s).query.model_dump_json(exclude_defaults=True)}"
        for s in ("upbeat rock from the 90s, no vocals, around 120 bpm", "calm orchestral music in a minor, no drums")
    )
    concepts = "; ".join(f"{c.name} ({', '.join(c.phrases[:4])})" for c in DESCRIPTORS)
    return (
        "You turn a request for a music playlist into search filters. Answer with exactly one JSON object that "
        "validates against the JSON schema below, and nothing else: no SQL, no code, no prose.\n"
        f"JSON schema: {schema}\n"
        f"include_tags/exclude_tags take only these audio tags: {', '.join(MSD_TAGS)}.\n"
        f"include_concepts/exclude_concepts take only these descriptors: {concepts}.\n"
        "features are hard ranges: tempo_bpm in beats per minute (fast: min 120, slow: max 90, 'around N': N-10..N+10); "
        "for relative words set percentile true and give 0..1 bounds (loud: loudness_db min 0.6). "
        "year_min/year_max for decades or years; artist, album and genres only when the request names them. "
        "Put anything else the request asks for in text (a few words), and other unwanted things in exclude_text. "
        "Leave out what the request does not say.\n"
        f"Examples:\n{examples}"
    )


_FENCE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.I)
MAX_LLM_BYTES = 1 << 20


def _content(api: str, body: Any) -> str:
    if api == "ollama":
        return body["message"]["content"]
    return body["choices"][0]["message"]["content"]


async def ask_llm(cfg: LlmConfig, text: str) -> InstantQuery:
    """The LLM's InstantQuery for `text`; raises ValueError (with a short reason) on any failure."""
    schema = InstantQuery.model_json_schema()
    messages = [{"role": "system", "content": system_prompt()}, {"role": "user", "content": text}]
    if cfg.api == "ollama":
        payload = {"model": cfg.model, "messages": messages, "stream": False, "format": schema, "options": {"temperature": 0}}
    else:
        payload = {
            "model": cfg.model, "messages": messages, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "InstantQuery", "schema": schema}},
        }
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as session:
            async with session.post(chat_url(cfg), json=payload, headers=headers) as resp:
                raw = await resp.content.read(MAX_LLM_BYTES + 1)
                if resp.status != 200:
                    raise ValueError(f"the LLM answered HTTP {resp.status}: {raw[:200].decode('utf-8', 'replace')}")
    except asyncio.TimeoutError:
        raise ValueError(f"the LLM did not answer within {cfg.timeout_s:g} s") from None
    except aiohttp.ClientError as e:
        raise ValueError(f"cannot reach the LLM: {type(e).__name__}: {e}") from None
    if len(raw) > MAX_LLM_BYTES:
        raise ValueError("the LLM's answer is too large")
    try:
        content = _content(cfg.api, json.loads(raw))
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError("the LLM's reply is not a chat completion") from None
    if not isinstance(content, str):
        raise ValueError("the LLM's reply has no text content")
    content = _FENCE.sub("", content.strip())
    start, end = content.find("{"), content.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"the LLM's answer holds no JSON object: {content[:120]!r}")
    try:
        return InstantQuery.model_validate_json(content[start : end + 1])
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ValueError(f"the LLM's answer does not fit the query schema ({where}: {err['msg']})") from None

