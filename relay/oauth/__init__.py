"""OAuth 2.0 for HTTP connections (design sections 3 and 6, issue 4): the
authorization-code flow with PKCE (``flow``), token requests (``client``), the tokens
and where they may be sent (``tokens``), single-flight refresh (``refresh``), the
pipeline's auth step (``step``), state-change webhooks (``signals``), the stores on
the registry database (``sqlstore``), connection state changes (``states``) and all
of it wired for one relay process (``service``).

Protocol pieces come from authlib's I/O-free primitives (``_authlib``); the HTTP is
aiohttp. The exception tree is in ``errors``.
"""
