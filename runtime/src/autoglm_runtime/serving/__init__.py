"""The HTTP layer, split as vLLM's ``entrypoints/openai/`` is::

routes       ─ parse the request, dispatch to a serving unit, wrap streams (and the probes)
models       ─ /v1/models, which model names a request may ask for
completions  ─ /v1/completions           ┐ serving units: testable without the app
chat         ─ /v1/chat/completions      ┘ (base: sampling, submit, collect, SSE stream)
errors       ─ engine errors → HTTP, the app's handlers (always OpenAI's error shape)
middleware   ─ body size limit, request metrics

The protocol models are :mod:`autoglm_runtime.schemas`; the error types :mod:`autoglm_runtime.errors`;
:func:`autoglm_runtime.app.create_app` puts them together.
"""
