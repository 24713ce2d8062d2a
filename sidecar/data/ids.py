"""Ids and the same-song rule, in one place.

- A track id is ours (a uuid hex). The media server has its own song ids, kept in the catalog under the
  namespace MEDIA_SERVER; a request may name a track by either, and answers show the media server's id where
  the catalog knows it (AudioMuse-AI's clients hand our answers to Navidrome).
- Two tracks are the same song (another file or edition of it) when their normalised title and artist are
  equal. Without an artist there is no such rule: an untagged library's titles are its file names.
"""
from __future__ import annotations

import re

MEDIA_SERVER = "subsonic"
_NON_WORD = re.compile(r"[^\w]+")


def norm_name(s: str | None) -> str:
    """Case-folded, punctuation and spacing made single spaces: how names are compared."""
    return _NON_WORD.sub(" ", (s or "").casefold()).strip()


def song_key(title: str | None, artist: str | None) -> tuple[str, str] | None:
    """What two files of one song share; None without both a title and an artist."""
    if not title or not artist:
        return None
    return norm_name(title), norm_name(artist)


def shown_id(brief: dict) -> str:
    """The id to show for a track from Catalog.tracks_brief: the media server's where known, else ours."""
    return brief.get("server_id") or brief["track_id"]
