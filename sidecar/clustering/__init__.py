"""Playlists from clustering the whole library: an evolutionary Monte-Carlo search over clustering algorithms
and their parameters (search.py), scored by purity and diversity of MusiCNN tags (scoring.py), the best
partition turned into named playlists (playlists.py), run as a cancellable background job (jobs.py, one
registry per sidecar: Sidecar.clustering_jobs). library.py reads what is clustered."""
