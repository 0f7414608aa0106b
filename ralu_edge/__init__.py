"""ralu_edge: the torch-free core of ralu-edge (RALU schedules and token bookkeeping, samplers over the
denoiser seam, the zeroth-order optimizer, the bundle manifest). Depends on numpy only; must not import
torch, onnxruntime, ralu_runtime or ralu_export."""

from ralu_edge.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
