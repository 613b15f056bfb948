"""Client for the ``background_blur`` Triton ensemble: library and ``bgblur`` command line.

Modules: ``transport`` (:class:`~bgblur_client.transport.BlurClient`, gRPC or HTTP),
``image`` and ``video`` (files in, files out), ``preview`` (before | after images),
``samples`` (a deterministic test clip and photo), ``h264`` (encoder settings), ``errors``
(:class:`~bgblur_client.errors.ClientError` and subclasses), ``cli`` and ``demo``.
"""
