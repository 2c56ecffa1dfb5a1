"""The operator console: a read-only live page of the network on the hub's health server.

``settings`` (``[console]``), ``source`` (the one module that reads the hub), ``charts`` (SVG drawn by
the server), ``views`` (what the page and the JSON API show, pure), ``page`` (HTML), ``auth`` (the
token), ``app`` (the routes) and :func:`mount_console` to serve it beside /healthz.
"""
