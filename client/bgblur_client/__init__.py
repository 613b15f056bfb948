"""Client for the ``background_blur`` Triton ensemble: library and ``bgblur`` command line.

Modules: ``transport`` (:class:`~bgblur_client.transport.BlurClient`, gRPC or HTTP),
``image`` and ``video`` (files in, files out), ``server_video`` (whole files blurred on the
server), ``encoding`` (encoder options and output containers), ``files`` (outputs that appear
whole), ``preview`` (before | after images), ``samples`` (a deterministic test clip and photo;
needs scikit-image), ``h264`` (encoder settings), ``errors``
(:class:`~bgblur_client.errors.ClientError` and subclasses) and ``cli``.

Installed on its own (``pip install ./client``) it needs no torch and no server library: the
GPU extras (CuPy, DALI, PyNvVideoCodec and the server library's NVDEC/NVENC code) are
imported only when asked for.
"""
