"""``lmtailor serve``: one model behind an OpenAI-compatible HTTP API, with concurrent requests decoded in batches.

- ``target.py``: what is served (model reference, adapter directory, merged export, a run's trained row)
- ``protocol.py``: the accepted request shapes, OpenAI's error shape; ``settings.py``: a server's settings and limits
- ``prompting.py``: requests to token ids, the context check, the JSON-schema enum constraint
- ``engines.py``: which engine serves the model (``--batching continuous`` or ``static``, llama.cpp's)
- ``continuous.py``, ``decode_batch.py`` and ``token_choice.py``: continuous batching, the worker thread whose
  waiting requests join the running batch at every decoding step over one KV cache, each row choosing its own tokens;
  ``prefix_cache.py``: the shared prompt prefix's keys and values, computed once
- ``engine.py`` and ``rows.py``: static batching, the worker thread that batches requests through ``generate``, and
  each row's state (its answer, stop strings, held-back text) with the stopping criteria and streamer around it
- ``auth.py``: loopback without a key, a bearer key elsewhere
- ``guard.py``: what every request passes first: a Host naming this server (DNS rebinding), JSON on POST (CSRF)
- ``app.py``: the FastAPI app (``create_app``); ``request_log.py``: its one log line per request; ``server.py``:
  uvicorn in the foreground or on a thread
- ``cli.py``: the ``serve`` subcommand; ``process.py``: the server as a child process (tests, the load test)
"""
