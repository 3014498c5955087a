"""Module structure: the bundle writer does not import the pipeline that calls it."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "edge_sparse"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_bundle_and_pipeline_do_not_import_each_other():
    assert "edge_sparse.pipeline" not in _imports(PKG / "bundle.py")
    assert not any(m.startswith("edge_sparse.pipeline") for m in _imports(PKG / "versions.py"))
