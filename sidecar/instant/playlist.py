"""An instant playlist from a request: the sentence understood (rules, or the LLM when asked and configured),
applied to the library's index, the survivors ranked; the answer says how and what was not applied."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from schemas.instant import InstantPlaylist, InstantRequest
from sidecar.instant.index import IndexCache, apply_filters, rank_tracks
from sidecar.instant.llm import LlmConfig, ask_llm
from sidecar.instant.parser import parse_instant

if TYPE_CHECKING:
    from sidecar.data.catalog import Catalog
    from sidecar.text.recommender import TextRecommender

log = logging.getLogger(__name__)


async def make_playlist(
    req: InstantRequest, catalog: "Catalog", indexes: IndexCache, text: "TextRecommender | None", *,
    text_unavailable: str | None = None, llm: LlmConfig | None = None,
) -> InstantPlaylist:
    """`text` is the text search (None where it is unavailable, for `text_unavailable`); `llm` the configured
    LLM, used only when the request asks for it. `req.model` must be a ready model or None (the caller checks)."""
    parsed = parse_instant(req.text)
    query, notes, parsed_by, llm_error = parsed.query, list(parsed.notes), "rules", None
    if req.use_llm:
        if llm is None:
            llm_error = "no LLM is configured (SIDECAR_LLM_URL): used the rules' parse"
        else:
            try:
                query, notes, parsed_by = await ask_llm(llm, req.text), [], "llm"
            except ValueError as e:
                llm_error = f"{e}: used the rules' parse"
                log.warning("instant playlist: %s", llm_error)

    def find():  # blocking: the catalog (SQLite) and the text search
        idx = indexes.current(catalog)
        applied = apply_filters(idx, query, req.limit)
        return applied, rank_tracks(idx, applied, req.limit, req.model, text, text_unavailable)

    ap, ranked = await asyncio.to_thread(find)
    if query.is_empty():
        notes.append("nothing in the request was understood as a filter")
    return InstantPlaylist(
        text=req.text, query=query, applied=ap.query, parsed_by=parsed_by, llm_error=llm_error, notes=notes + ap.notes + ranked.notes,
        ranked_by=ranked.ranked_by, tag_threshold=ap.threshold, library=ap.library, candidates=len(ap.candidates), tracks=ranked.tracks,
    )
