"""``lmtailor serve``: one model behind an OpenAI-compatible HTTP API, with concurrent requests decoded in batches.

- ``target.py``: what is served (model reference, adapter directory, merged export, a run's trained row)
- ``protocol.py``: the accepted request shapes, the limits, OpenAI's error shape
- ``prompting.py``: requests to token ids, the context check, the JSON-schema enum constraint
- ``engine.py`` and ``rows.py``: the worker thread that batches requests through ``generate``, and the per-row
  stopping criteria and streamer that route each row's tokens to its request
- ``auth.py``: loopback without a key, a bearer key elsewhere
- ``guard.py``: what every request passes first: a Host naming this server (DNS rebinding), JSON on POST (CSRF)
- ``app.py``: the FastAPI app (``create_app``); ``server.py``: uvicorn in the foreground or on a thread
- ``cli.py``: the ``serve`` subcommand; ``process.py``: the server as a child process (tests, the load test)
"""
