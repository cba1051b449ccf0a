"""Batch scoring: ``fedguard predict NAME[:VERSION] --input FILE --output predictions.parquet``.

The same guards as the predict route, for a file instead of a request: the
model's signature is verified before ONNX Runtime opens it
(:func:`serving.models.load_version`), the whole file is validated against
the signed schema and the configured ranges before one row is scored
(:mod:`.inputs`), rows are scored in bounded chunks and shaped by the same
output hardening as the API (:func:`serving.guards.outputs.shape_output`),
the output appears atomically, and one audit event records who scored what
(digests and counts, never values) (:mod:`.scoring`). Like the server, this
imports neither torch nor any training code.
"""
