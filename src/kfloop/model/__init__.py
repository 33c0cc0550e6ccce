"""Model engineering: features, training, evaluation, acceptance and ONNX packaging."""
