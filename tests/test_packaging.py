"""The wheel a hospital installs holds every module (an editable install would hide a missing one)."""

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_list_names_every_folder_with_an_init():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    for name, folder in setup["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            assert ".".join([name, *rel.parts]) in listed, f"{init.parent} is missing from [tool.setuptools] packages"


def test_the_wheel_installs_and_imports_every_module_without_the_source_tree(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fedclip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fedclip/model_configs/visionclip-tiny.json" in names
    studies = {f"fedclip/experiments/studies/{n}.toml" for n in ("quickstart", "epsilon_sweep", "paper_scale")}
    assert studies <= set(names)
    modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in names
                     if n.endswith(".py") and n.startswith("fedclip/"))
    assert {"fedclip.federated.server_app", "fedclip.federated.client_app", "fedclip.cli.main"} <= set(modules)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import importlib, sys, fedclip; assert fedclip.__file__.startswith(sys.argv[1]), fedclip.__file__\n"
            f"for m in {modules!r}: importlib.import_module(m)")
    res = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
