"""Serving: the ONNX predictor (KServe), payload events, input signature and batching."""
