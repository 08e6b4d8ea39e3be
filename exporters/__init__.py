"""onestep exporters: ONNX, TensorRT, Triton."""
