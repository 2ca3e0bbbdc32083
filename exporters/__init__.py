"""Export trained Allegro models to ONNX and TensorRT."""
