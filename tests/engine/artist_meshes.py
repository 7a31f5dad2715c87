"""Head meshes as artists have them, made in the test: Blender's Suzanne (subdivided; bpy runs in a
child process so the engine tests never load Blender), and variations of the FLAME-free built-in head."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUZANNE_SCRIPT = """
import sys, bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_monkey_add(size=0.25)
bpy.context.active_object.modifiers.new("subdivide", "SUBSURF").levels = 2
bpy.ops.wm.obj_export(filepath=sys.argv[-1], export_selected_objects=True, export_materials=False,
                      export_uv=False, export_normals=False)
"""


def suzanne_obj(path: Path) -> Path:
    """A subdivided Suzanne (quads, 0.25 m, eyes as separate shells) written by Blender's OBJ exporter:
    Y up, the face along +Z, as the engine expects."""
    done = subprocess.run([sys.executable, "-c", SUZANNE_SCRIPT, "--", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and path.is_file(), done.stderr[-2000:]
    return path
