"""Music recommendation sidecar for Navidrome and other Subsonic servers."""
__version__ = "0.1.0"
