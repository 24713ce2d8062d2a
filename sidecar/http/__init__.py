"""The HTTP API and the web page (aiohttp): the app factory (app), what routes share (common), who may call
what (access), the API's own description (openapi), and the handlers (routes/), which parse a request, call
the domain code off the event loop and answer its result as JSON."""
