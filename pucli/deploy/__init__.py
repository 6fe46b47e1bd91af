"""Shipping a compressed model: ONNX export, int8 quantization, and running ONNX on ONNX Runtime.

- :mod:`pucli.deploy.onnx_export`: ``torch.onnx.export`` with a dynamic batch axis and a check
  against PyTorch on real images; :mod:`pucli.deploy.metadata`: the model's preprocessing, class
  names and size in the ONNX file's metadata, written and read back.
- :mod:`pucli.deploy.int8`: static int8 quantization (QDQ, per-channel weights) with
  ``onnxruntime.quantization``, calibrated on unlabeled images from any source pucli reads.
- :mod:`pucli.deploy.onnx_runtime`: an ONNX file as a model ``pucli.evaluate`` can measure (CPU
  execution provider).
- :mod:`pucli.deploy.plot`: accuracy against latency and size, one point per evaluated model.
- :mod:`pucli.deploy.export`: ``pucli export`` in one call (load, export, check, quantize).

Needs the ``export`` extra (``pip install 'pucli[export]'``: onnx, onnxruntime, onnxscript); the
plot needs the ``plot`` extra (matplotlib). Nothing here is imported by ``import pucli``.
"""
