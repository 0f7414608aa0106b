"""Export families and targets are plug-ins (issue 14): every family's example builders give exactly the inputs
its templates declare, the int8 policy and the parity rule are one table each, a target module imports no
other target, and no exporter stage compares a family's or an encoder's name (STYLE.md: a model-name `if`
outside the table is a bug)."""

import ast
from pathlib import Path

import numpy as np
import pytest

from ralu_export.families import FAMILIES
from ralu_export.families.spec import EXAMPLE_BATCH, FamilySpec, Geometry, TensorTemplate, present
from ralu_export.families.spec import Tolerances
from ralu_export.int8_policy import INT8_BY_DEFAULT, INT8_METHODS, int8_method, precision_label
from ralu_export.parity import parity_rule
from ralu_export.targets import TARGET_SPECS, TARGETS

EXPORT = Path(__file__).resolve().parents[1] / "export"
# The exporter's stages: they take families and targets as data and must not branch on their names.
STAGES = ("plan.py", "bundle.py", "examples.py", "onnx_graphs.py", "static_programs.py", "onnx_export.py",
          "int8_policy.py", "parity.py", "cli.py", "targets/__init__.py", *(f"targets/{t}.py" for t in TARGETS))


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def test_every_target_is_a_module_with_build_that_imports_no_other_target():
    assert set(TARGET_SPECS) == set(TARGETS)
    for target in TARGETS:
        path = EXPORT / "targets" / f"{target}.py"
        tree = ast.parse(path.read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "build" for n in tree.body), path
        others = {f"ralu_export.targets.{t}" for t in TARGETS if t != target}
        assert not _imports(path) & others, f"{path} imports another target"


def test_no_exporter_stage_compares_a_family_or_encoder_name():
    names = {f.name for f in FAMILIES.values()} | set(FAMILIES) | {"clip", "t5"}
    for rel in STAGES:
        for node in ast.walk(ast.parse((EXPORT / rel).read_text())):
            if isinstance(node, ast.Compare):
                constants = {c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
                assert not constants & names, f"export/{rel}:{node.lineno} compares a name from the family table"


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_int8_policy_quantizes_denoisers_on_request_and_device_text_encoders_always(family, target, precision):
    for spec in family.graphs:
        method = int8_method(target, precision, spec)
        assert precision_label(method) == ("fp32" if method is None else f"int8-{method}")
        if spec.role in ("vae_decoder", "vae_encoder"):
            assert method is None
        elif spec.role == "text_encoder" and target in ("android", "executorch", "ios"):
            expected_float = target == "executorch" and spec.module == "T5TextEncoder"  # pt2e cannot take T5
            assert (method is None) == expected_float, spec.name
        elif spec.role in INT8_METHODS[target]:
            assert (method is not None) == (precision == "int8"), spec.name
    assert set(INT8_METHODS) == set(INT8_BY_DEFAULT) == set(TARGETS)


def test_float_graphs_are_judged_by_relative_error_per_engine_and_int8_graphs_by_cosine():
    tolerances = Tolerances(fp32_rel=1e-3, int8_cosine=0.99, xnnpack_rel=1e-2)
    assert parity_rule(tolerances, "onnxruntime", "fp32") == ("max_rel", 1e-3)
    assert parity_rule(tolerances, "xnnpack", "fp32") == ("max_rel", 1e-2)
    for engine in ("onnxruntime", "xnnpack"):
        assert parity_rule(tolerances, engine, "int8-weight_qdq") == ("cosine", 0.99)


def _model_folder(family: FamilySpec, tmp_path_factory) -> Path:
    from tests.test_export_cli import FAMILY_TEST_MODELS

    from ralu_export import tiny_models
    from ralu_export.models import resolve_model

    model = FAMILY_TEST_MODELS[family.pipeline_class]
    if hasattr(tiny_models, model):
        return getattr(tiny_models, model)(tmp_path_factory.mktemp(family.name) / model)
    return resolve_model(model)


def _expected_shape(template: TensorTemplate, family: FamilySpec, geometry: Geometry, dims: dict) -> tuple:
    """The template's shape at a case, derived dims (root * times + plus) evaluated from the family's table."""
    sizes = geometry.sizes()
    values = {"batch": EXAMPLE_BATCH, "num_placeholders": 0,
              "num_image_tokens": geometry.grid_height * geometry.grid_width, **dims}
    for name, spec in family.dims.items():
        if spec.root in values:
            term = lambda t: t if isinstance(t, int) else sizes[t]  # noqa: E731
            values[name] = values[spec.root] * term(spec.times) + term(spec.plus)
    return tuple(d if isinstance(d, int) else sizes.get(d, values.get(d)) for d in template.shape)


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda f: f.name)
def test_every_example_has_the_declared_names_dtypes_and_shapes(family, tmp_path_factory):
    from ralu_edge.rng import rng_for
    from ralu_export import examples

    folder = _model_folder(family, tmp_path_factory)
    geometry = family.geometry(folder, 64, 64)
    token_ids = {e.graph: np.arange(geometry.sizes()[e.length], dtype=np.int64)[None] for e in family.encoders}
    for spec in family.graphs:
        cases = examples.parity_cases(spec, geometry, [geometry.grid_height * geometry.grid_width, 6])
        for label, dims in [("trace", examples.trace_case(geometry)), *cases]:
            arrays = examples.example_arrays(spec, geometry, dims, rng_for(0, label), token_ids)
            templates = present(spec.inputs, geometry)
            assert list(arrays) == [t.name for t in templates], (spec.name, label)
            for t in templates:
                assert arrays[t.name].dtype == np.dtype(t.dtype), (spec.name, t.name)
                assert arrays[t.name].shape == _expected_shape(t, family, geometry, dims), (spec.name, label, t.name)
