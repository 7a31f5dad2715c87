"""The extension as Blender gets it: `build.py`'s zip passes Blender's validator, installs into an
extensions repository and registers/unregisters cleanly twice; the package imports only bpy, numpy and
the standard library (never torch or the engine). Each Blender session runs in its own process."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "headsculpt_blender"

pytestmark = pytest.mark.bpy


def run_blender_python(script: str, tmp_path: Path) -> dict:
    """Run `script` in a fresh Python with bpy (and a throw-away Blender user folder); it prints JSON."""
    pytest.importorskip("bpy", reason="Blender's bpy module is not installed (python build.py setup)")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "blender-user"))
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                               env=env, cwd=tmp_path, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_zip_passes_the_validator_and_holds_the_package(built_zip):
    import zipfile

    with zipfile.ZipFile(built_zip) as archive:
        names = set(archive.namelist())
    assert built_zip.name == "headsculpt-0.1.0.zip"
    assert {"blender_manifest.toml", "__init__.py", "client.py", "importer.py"} <= names
    assert not any("__pycache__" in name for name in names)
    assert "assets/base_head.obj" in names  # the built-in head for "Add base head"


def test_installs_into_a_repository_and_registers_twice(built_zip, tmp_path):
    result = run_blender_python(f"""
        import json, os, sys
        import bpy
        repo_dir = {str(tmp_path / "repo")!r}
        os.makedirs(repo_dir)
        bpy.ops.preferences.extension_repo_add(name="hstest", type="LOCAL", custom_directory=repo_dir,
                                               use_custom_directory=True)
        repo = [r for r in bpy.context.preferences.extensions.repos if r.name == "hstest"][0]
        bpy.ops.extensions.package_install_files(filepath={str(built_zip)!r}, repo=repo.module,
                                                 enable_on_install=True)
        module = "bl_ext." + repo.module + ".headsculpt"
        steps = [("installed", module in bpy.context.preferences.addons, hasattr(bpy.types.Scene, "headsculpt"),
                  hasattr(bpy.types, "HEADSCULPT_PT_main"))]
        for _ in range(2):
            bpy.ops.preferences.addon_disable(module=module)
            steps.append(("disabled", module in bpy.context.preferences.addons,
                          hasattr(bpy.types.Scene, "headsculpt"), hasattr(bpy.types, "HEADSCULPT_PT_main")))
            bpy.ops.preferences.addon_enable(module=module)
            steps.append(("enabled", module in bpy.context.preferences.addons,
                          hasattr(bpy.types.Scene, "headsculpt"), hasattr(bpy.types, "HEADSCULPT_PT_main")))
        user = bpy.utils.extension_path_user(module, create=True)
        print("RESULT " + json.dumps({{"steps": steps, "user": user, "files": sorted(os.listdir(
            os.path.join(repo_dir, "headsculpt"))), "torch": "torch" in sys.modules}}))
    """, tmp_path)
    assert result["steps"] == [["installed", True, True, True],
                               ["disabled", False, False, False], ["enabled", True, True, True],
                               ["disabled", False, False, False], ["enabled", True, True, True]]
    assert "__init__.py" in result["files"] and result["torch"] is False
    assert result["user"].startswith(str(tmp_path / "blender-user"))


def test_importing_the_package_does_not_import_torch(tmp_path):
    result = run_blender_python(f"""
        import json, sys, importlib, pkgutil
        sys.path.insert(0, {str(ROOT)!r})
        import bpy
        import headsculpt_blender
        names = [m.name for m in pkgutil.iter_modules(headsculpt_blender.__path__)]
        for name in names:
            importlib.import_module("headsculpt_blender." + name)
        headsculpt_blender.register()
        headsculpt_blender.unregister()
        print("RESULT " + json.dumps({{"modules": names, "torch": "torch" in sys.modules,
                                       "engine": any(m.startswith("headsculpt_engine") for m in sys.modules)}}))
    """, tmp_path)
    assert len(result["modules"]) >= 8
    assert result["torch"] is False and result["engine"] is False


def test_package_imports_only_bpy_numpy_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"bpy", "bpy_extras", "mathutils", "numpy", "addon_utils"}  # Blender's own
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.name} imports {roots}"
