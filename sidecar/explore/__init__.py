"""Exploration over the embedding space, by feature: song paths (path.py), song alchemy (alchemy.py), the sonic
fingerprint (fingerprint.py), the music map (maps.py, with the 2-D projections in plane.py), similar artists
(artists.py) and track search (search.py). AudioMuse-AI compatible where it has the same endpoint
(docs/API.md). Each feature is plain functions of the catalog, the vector store, the request model and, where
it caches, the sidecar's ExploreCaches (state.py); they block, so the HTTP layer runs them in worker threads.

Every vector read comes from the store's exact in-memory mirrors (VectorStore's read methods), never from
Milvus; what is computed from them works on the copies those methods return.

Choices that differ from AudioMuse-AI's described algorithms, and why:
- Song path: the ideal points are a spherical interpolation of the two *normalised* vectors, and the tracks are
  assigned to them all at once (a linear assignment maximising total similarity) instead of greedily point by
  point, so an early point cannot take the track a later one needed and the path has exactly max_steps
  distinct tracks whenever the library has that many that are not near-duplicates. Near-duplicates (the same
  song by sidecar.data.ids.song_key, or the same recording by sidecar.data.recordings) are excluded against the
  whole path, not a lookback window. A cosine threshold cannot tell a recording: a -6 dB copy falls to 0.90 while
  distinct tracks of one album reach 0.996 (scripts/bench_quality.py).
- Alchemy: a candidate is filtered when it is close to *any* subtracted track, not to the subtract centroid
  (the centroid of two different tracks may lie near neither); sampling is seeded and reproducible.
- Sonic fingerprint: every play counts, decayed by its age (half-life), so recent taste dominates; favourites
  weigh more; low-rated tracks are neither seeds nor results.
- Map: UMAP is not used: on this project's machines it took 110 s for 10k tracks and 158 s for 100k (see
  docs/API.md). PCA, or t-SNE up to 2,000 tracks; computed once, cached, patched in place for small changes.
"""
