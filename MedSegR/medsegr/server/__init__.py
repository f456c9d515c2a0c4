"""The MedSegR engine server: one model on one device behind a small versioned HTTP API.

``medsegr serve`` (see :mod:`medsegr.server.commands`) runs it on FastAPI + uvicorn;
:func:`medsegr.server.app.create_app` builds the application around an already
loaded :class:`medsegr.pipeline.MedSegRPipeline`. The client side is
:mod:`medsegr.client` (standard library + numpy only).

Modules: ``settings`` (limits and defaults), ``security`` (bearer token, bind
address, body-size limit), ``errors`` (every error as JSON ``{"error": {"code",
"message"}}``), ``schemas`` (request/response models, the OpenAPI document),
``sessions`` (the session store: LRU, idle expiry, memory bound), ``worker`` (the
single model thread with its bounded FIFO queue, timeouts and cancellation),
``routes`` (the ``/v1`` endpoints), ``app`` (the application factory), ``commands``
(the ``serve`` sub-command). Importing this package is cheap.
"""

from __future__ import annotations
