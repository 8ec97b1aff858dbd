"""The gateway: the hot path every call to a protected model passes through.

Request order: auth -> limits -> upstream -> response -> audit. Each stage is a module here;
`pipeline.py` strings them together and `app.py` assembles the ASGI application.
"""
