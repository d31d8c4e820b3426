"""No pickle anywhere in the package: loading one runs code, and fedclip loads files from other people."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("fedclip", "audits", "cli", "experiments")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def unsafe_loads(source: str) -> list[str]:
    """The unsafe deserialisation calls in one module's source, as written."""
    found = []
    for node, name in _calls(ast.parse(source)):
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "torch.jit.load"):
            found.append(name)
        elif name.endswith("torch.load"):
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                found.append(f"{name} without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            allow = keywords.get("allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                found.append(f"{name}(allow_pickle=True)")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"import {n}" for n in names if n and n.split(".")[0] in ("pickle", "cPickle", "dill")]
    return found


def test_the_scanner_finds_each_unsafe_form():
    bad = ("import pickle\npickle.loads(b'')\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
           "np.load('x', allow_pickle=True)\n")
    assert unsafe_loads(bad) == ["pickle.loads", "torch.load without weights_only=True",
                                 "torch.load without weights_only=True", "np.load(allow_pickle=True)",
                                 "import pickle"]
    assert unsafe_loads("torch.load('x', weights_only=True)\nnp.load('x')\n") == []


def test_no_module_of_the_package_can_load_a_pickle():
    offenders = {}
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found = unsafe_loads(path.read_text())
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}
