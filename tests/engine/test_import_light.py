"""Importing the engine, building its CLI and `--help` stay free of torch (Blender and the server's
startup rely on it)."""
import subprocess
import sys

CHECK = """
import sys
{body}
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def _heavy_modules(body: str) -> str:
    done = subprocess.run([sys.executable, "-c", CHECK.format(body=body)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_import_engine_does_not_import_torch():
    assert _heavy_modules("import headsculpt_engine") == "none"


def test_cli_help_does_not_import_torch():
    body = ("import contextlib, io\nfrom headsculpt_engine import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
            "import headsculpt_engine.models.loading, headsculpt_engine.guidance.factory")
    assert _heavy_modules(body) == "none"


def test_python_m_help_runs_and_lists_make_tiny_models():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "headsculpt_engine", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "make-tiny-models" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "diffusers" not in imported


def test_download_models_does_not_import_torch():
    """The add-on's Download models runs before any model is needed: huggingface_hub only."""
    body = ("import headsculpt_engine.commands.download_models, headsculpt_engine.models.download, "
            "headsculpt_engine.models.download_progress")
    assert _heavy_modules(body) == "none"
