"""The media server (Navidrome / Subsonic), beside the ingest pipeline when SIDECAR_MEDIA_SERVER_URL is set.

- identity (matching.py, sync.py): the server's songs are listed (search3, paged); each song's `path` becomes
  local paths through the prefix mapping (SIDECAR_MEDIA_SERVER_PATH_PREFIX, SERVER_PREFIX=LOCAL_PREFIX) and
  the server's song id is recorded for the track that file belongs to (catalog external ids, namespace
  MEDIA_SERVER). Songs whose file the sidecar has not analysed yet wait, and are matched as soon as the
  catalog gains files. Where a server reports made-up paths (Navidrome does unless
  ND_SUBSONIC_DEFAULTREPORTREALPATH=true), a song is matched by its tags instead (same title and album,
  duration within 2 s, one candidate only).
- listening history (sync.py): every SIDECAR_MEDIA_SERVER_SYNC_INTERVAL_S the configured user's stars,
  ratings, play counts and last plays become ratings and listens.
- library changes (scans.py): a finished scan (getScanStatus polled every SIDECAR_MEDIA_SERVER_SCAN_POLL_S,
  Navidrome's event stream with SIDECAR_PLUGINS__SUBSONIC__EVENTS=on, or POST /webhooks/navidrome) puts a
  ScanCompleted on the bus, so the worker reconciles the music folders.
- playlists written back (playlists.py): from track ids or a recommendation request, re-run on a schedule.
- service.py: MediaServerService, the background loops and their state, owned by the Sidecar (`sc.media`).

None of this may stop the sidecar: a wrong password or a server that is down is logged (once per distinct
error, never with a secret; errorlog.py), shown in GET /api/mediaserver, and retried with backoff. The
adapter (sidecar.plugins.api.MediaServer) is a plugin; the HTTP handlers are in sidecar/http/routes/mediaserver.py.
"""
