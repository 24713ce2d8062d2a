"""Instant playlists from one sentence (POST /api/instant_playlist {text, limit, model, use_llm}).

A deterministic parser turns the sentence into an `InstantQuery` (parser.py); an optional LLM may fill the same
structure instead (llm.py); the query is applied to the library's index and the survivors ranked (index.py);
playlist.py puts these together. Nothing produced from the request is ever executed.
"""
