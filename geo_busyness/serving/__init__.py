"""Online inference: the deployment bundle and an HTTP server for SageMaker's hosting contract.

``bundle`` writes and loads the directory a deployment ships (model, feature snapshot,
manifest); ``requests`` and ``responses`` turn request bodies into (cell, hour) keys and
predictions into response bodies without touching HTTP; ``app`` is the ASGI layer and
``__main__`` the ``serve`` command.
"""
