"""Online inference: the deployment bundle and an HTTP server for SageMaker's hosting contract.

* ``bundle``: write, pack (``model.tar.gz``) and load the directory a deployment ships;
* ``snapshot``: the batch (cell, hour) → feature-row lookup of a loaded bundle;
* ``requests`` / ``inference`` / ``responses``: body → validated keys → predictions → body,
  pure functions that never see HTTP;
* ``app``: the Starlette ASGI app (``GET /ping``, ``POST /invocations``);
* ``protocol``: the HTTP/1.1 connection (httptools) with deadlines and bounds;
* ``__main__``: the ``serve`` command (uvicorn with uvloop and that protocol);
* ``demo``: a synthetic bundle for trying the server, its tests and its benchmark.
"""
