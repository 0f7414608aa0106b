"""ralu_runtime: the NumPy + ONNX Runtime runtime (bundles, backends, Pipeline, Personalizer, CLIs).
Imports ralu_edge, numpy, onnxruntime, tokenizers, safetensors, Pillow and tqdm; never torch or ralu_export."""

import ralu_edge

__all__ = ["ralu_edge"]
__version__ = "0.1.0"
