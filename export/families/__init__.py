"""Export families, one module per architecture (flux.py, sd3.py), registered here by the diffusers pipeline
class that selects them; the declarative types are in spec.py (and exported here, with the families, as the
package's API), graphs several families share in components.py. A model name never appears in an `if`
outside a family module (STYLE.md)."""

from __future__ import annotations

from ralu_edge.errors import UserError
from ralu_export.families.flux import FLUX
from ralu_export.families.sd3 import SD3
from ralu_export.families.spec import EncoderRole, FamilySpec, Geometry, GraphSpec, TensorTemplate, boundary_module

__all__ = ["FAMILIES", "FLUX", "SD3", "EncoderRole", "FamilySpec", "Geometry", "GraphSpec", "TensorTemplate",
           "boundary_module", "family_for"]

FAMILIES: dict[str, FamilySpec] = {family.pipeline_class: family for family in (FLUX, SD3)}


def family_for(pipeline_class: str) -> FamilySpec:
    """The family exporting a diffusers pipeline class; UserError listing the supported ones otherwise."""
    if pipeline_class not in FAMILIES:
        raise UserError(f"pipeline class {pipeline_class!r} has no export family yet; supported: "
                        f"{', '.join(FAMILIES)}.")
    return FAMILIES[pipeline_class]
