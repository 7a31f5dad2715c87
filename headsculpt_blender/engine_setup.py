"""Set up engine: the extension makes its own engine, so that the zip alone is enough.

A Python 3.11 virtual environment in the extension's user folder gets the engine wheel that the zip
carries (`engine_dist/`), the project's pinned dependency set for this platform, and the PyTorch build
for this machine. It only runs when the artist presses the button and Blender's online access allows it.
Each step is safe to repeat, so pressing again repairs or finishes a half-done install; the environment
counts as ready only once its last step (a check that the engine imports) wrote `READY_FILE`.

No bpy here: the operator gathers what it needs on the main thread, `SETUP.start(plan)` runs the steps in
a worker thread, and the preferences and the panel draw `SETUP.snapshot()`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from .background import Cancelled, Worker

PAYLOAD_DIR = Path(__file__).resolve().parent / "engine_dist"
ENV_DIR_NAME = "engine-env"
READY_FILE = "headsculpt-ready.json"
LOG_FILE = "setup.log"
PYTHON_VERSION = (3, 11)  # mediapipe 0.10.21 and the pinned set are built for it, like Blender 4.2-4.5
TORCH_VERSION = "2.13.0"  # as build.py's TORCH_REQUIREMENT
# The PyTorch project's own package indexes, for the builds PyPI does not carry: the CPU-only build for
# Linux and Windows (PyPI's Linux wheel is the large CUDA build) and the CUDA build for Windows.
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYTORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu130"
# A studio mirror (or a local folder of wheels, as the tests use) instead of the PyTorch index above;
# set but empty: only the package sources pip is configured with.
TORCH_INDEX_ENV = "HEADSCULPT_TORCH_INDEX_URL"

ONLINE_ACCESS_OFF = ("Online access is off in Blender, and setting up the engine downloads PyTorch and the "
                     "engine's packages (about 1-4 GB). Allow it in Edit > Preferences > System > Network "
                     "(Allow Online Access), then press Set up engine again.")

# Small enough to run as `python -c`: what the status line says about the engine that was set up.
PROBE = """
import json, torch, headsculpt_engine
info = {"engine": headsculpt_engine.__version__, "torch": torch.__version__.split("+")[0], "device": "CPU"}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(device="CUDA", gpu=props.name, memory_gb=round(props.total_memory / 2**30))
elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
    info.update(device="MPS")
print("HEADSCULPT-PROBE " + json.dumps(info))
"""


class SetupError(Exception):
    """A setup problem, in a sentence the artist can act on."""


@dataclass(frozen=True)
class TorchBuild:
    """The PyTorch for this machine: requirement, extra package index ("" = none) and a label."""

    requirement: str
    index_url: str
    label: str


def choose_torch(system: str, machine: str, nvidia_gpu: bool) -> TorchBuild:
    """CUDA where an NVIDIA GPU is present, the standard build on macOS, the CPU build otherwise."""
    system = system.lower()
    if system == "darwin":
        arm = machine.lower() in ("arm64", "aarch64")
        return TorchBuild(f"torch=={TORCH_VERSION}", "", "Apple Silicon (MPS)" if arm else "CPU")
    if nvidia_gpu:
        if system == "linux":  # PyPI's Linux wheels are the CUDA builds
            return TorchBuild(f"torch=={TORCH_VERSION}", "", "CUDA")
        return TorchBuild(f"torch=={TORCH_VERSION}+cu130", PYTORCH_CUDA_INDEX, "CUDA")
    return TorchBuild(f"torch=={TORCH_VERSION}+cpu", PYTORCH_CPU_INDEX, "CPU")


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver answers (nvidia-smi lists a GPU)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def machine_torch() -> TorchBuild:
    build = choose_torch(platform.system(), platform.machine(), nvidia_gpu_present())
    if TORCH_INDEX_ENV in os.environ:
        build = replace(build, index_url=os.environ[TORCH_INDEX_ENV].strip())
    return build


def constraints_name(system: str, machine: str) -> str:
    """The pinned dependency set's file for a platform (build.py's LOCK_PLATFORMS), "" if none."""
    system, machine = system.lower(), machine.lower()
    if system == "linux" and machine in ("x86_64", "amd64"):
        return "py311-linux-x86_64.txt"
    if system == "darwin" and machine in ("arm64", "aarch64"):
        return "py311-macos-arm64.txt"
    if system == "windows" and machine in ("amd64", "x86_64"):
        return "py311-windows-x86_64.txt"
    return ""


def env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ready_info(env_dir: Path) -> dict | None:
    """What the last finished setup found (torch version, device, GPU), or None if none finished."""
    try:
        info = json.loads((env_dir / READY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and env_python(env_dir).is_file() else None


def ready_python(env_dir: Path) -> str:
    """The set-up engine's interpreter, or "" when no setup has finished there."""
    return str(env_python(env_dir)) if ready_info(env_dir) is not None else ""


def ready_line(info: dict) -> str:
    """E.g. "Engine ready: torch 2.13.0, CUDA, NVIDIA GeForce RTX 4090 (24 GB)"."""
    parts = [f"torch {info.get('torch', '?')}", str(info.get("device", "CPU"))]
    if info.get("gpu"):
        parts.append(f"{info['gpu']} ({info.get('memory_gb', '?')} GB)")
    return "Engine ready: " + ", ".join(parts)


@dataclass(frozen=True)
class SetupPlan:
    """Everything a setup run needs, gathered on Blender's main thread."""

    env_dir: Path
    wheel: Path
    constraints: Path | None
    torch: TorchBuild
    base_pythons: tuple[str, ...]  # interpreters to try for creating the environment, in order


def bundled_wheel(payload: Path = PAYLOAD_DIR) -> Path:
    wheels = sorted(payload.glob("headsculpt_engine-*.whl"))
    if not wheels:
        raise SetupError("This installation has no engine inside (engine_dist/ is missing): install the "
                         "HeadSculpt zip made by `python build.py build`, or use a remote engine.")
    return wheels[-1]


def base_python_candidates() -> tuple[str, ...]:
    """Blender's own Python first when it is 3.11, then a Python 3.11 on PATH."""
    found = [sys.executable] if sys.version_info[:2] == PYTHON_VERSION else []
    for name in ("python3.11", "python3", "python"):
        path = shutil.which(name)
        if path and path not in found:
            found.append(path)
    return tuple(found)


def make_plan(user_dir: Path, payload: Path = PAYLOAD_DIR) -> SetupPlan:
    name = constraints_name(platform.system(), platform.machine())
    constraints = payload / "constraints" / name if name else None
    return SetupPlan(env_dir=user_dir / ENV_DIR_NAME, wheel=bundled_wheel(payload),
                     constraints=constraints if constraints is not None and constraints.is_file() else None,
                     torch=machine_torch(), base_pythons=base_python_candidates())


@dataclass
class SetupState:
    """What the preferences and the panel show; copied out under the runner's lock."""

    phase: str = "idle"  # idle | running | done | failed | cancelled
    step: int = 0
    steps: int = 0
    title: str = ""
    package: str = ""
    downloaded_bytes: int = 0
    message: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        """One status line, e.g. "Step 3 of 5: Installing PyTorch (CPU): torch, 212 MB downloaded"."""
        if self.phase != "running":
            return self.message
        text = f"Step {self.step} of {self.steps}: {self.title}"
        if self.package:
            text += f": {self.package}"
        if self.downloaded_bytes:
            text += f", {self.downloaded_bytes / 1e6:.0f} MB downloaded"
        return text


class PipProgress:
    """Reads pip's output (with `--progress-bar raw`): the package at hand and the bytes downloaded."""

    COLLECTING = re.compile(r"^\s*(?:Collecting|Processing|Requirement already satisfied:)\s+(\S+)")
    DOWNLOADING = re.compile(r"^\s*Downloading\s+(\S+)")
    PROGRESS = re.compile(r"^\s*Progress\s+(\d+)\s+of\s+(\d+)")
    INSTALLING = re.compile(r"^\s*Installing collected packages:\s*(.*)")

    def __init__(self) -> None:
        self.package = ""
        self.finished_bytes = 0
        self.current_bytes = 0

    @property
    def downloaded_bytes(self) -> int:
        return self.finished_bytes + self.current_bytes

    def feed(self, line: str) -> None:
        if match := self.PROGRESS.match(line):
            self.current_bytes = int(match.group(1))
            return
        if match := self.DOWNLOADING.match(line):
            self._finish_download()
            self.package = _package_name(match.group(1))
        elif match := self.COLLECTING.match(line):
            self._finish_download()
            self.package = _package_name(match.group(1))
        elif match := self.INSTALLING.match(line):
            self._finish_download()
            count = len([name for name in match.group(1).split(",") if name.strip()])
            self.package = f"unpacking {count} package{'s' if count != 1 else ''}"

    def _finish_download(self) -> None:
        self.finished_bytes += self.current_bytes
        self.current_bytes = 0


def _package_name(spec: str) -> str:
    """"torch==2.13.0+cpu", ".../torch-2.13.0+cpu-cp311-...whl" or "numpy<2,>=1.24" -> the bare name."""
    spec = spec.rsplit("/", 1)[-1]
    if spec.endswith(".whl") or spec.endswith(".tar.gz"):
        return spec.split("-", 1)[0]
    return re.split(r"[<>=!~\[; (]", spec, maxsplit=1)[0]


@dataclass(frozen=True)
class Step:
    title: str
    command: tuple[str, ...]


def install_steps(plan: SetupPlan) -> list[Step]:
    """The pip steps after the environment exists; each is a no-op when its work is already done."""
    python = str(env_python(plan.env_dir))
    pip = (python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input")
    pins = ("-c", str(plan.constraints)) if plan.constraints is not None else ()
    index = ("--extra-index-url", plan.torch.index_url) if plan.torch.index_url else ()
    raw = ("--progress-bar", "raw")  # pip >= 24.1, which the first step brings
    return [
        # Older pips (Python 3.11's own is 23.2) cannot report download progress.
        Step("Updating pip", pip + pins + ("pip",)),
        Step(f"Installing PyTorch ({plan.torch.label})", pip + raw + pins + index + (plan.torch.requirement,)),
        Step("Installing the engine's packages", pip + raw + pins + (str(plan.wheel),)),
        # The zip's own engine, even where an engine of the same version number is there already.
        Step("Installing the engine", pip + raw + ("--force-reinstall", "--no-deps", str(plan.wheel))),
        Step("Checking the engine", (python, "-c", PROBE)),
    ]


class EngineSetup(Worker):
    """One setup run at a time, in a worker thread; cancellable; its state readable at any time."""

    def __init__(self) -> None:
        super().__init__(SetupState(), "headsculpt-setup")

    def snapshot(self) -> SetupState:
        with self._lock:
            return replace(self._state, log=list(self._state.log[-20:]))

    def start(self, plan: SetupPlan) -> None:
        if self.running:
            raise SetupError("The engine is being set up already; wait for it or cancel it.")
        self._launch(SetupState(phase="running", steps=1 + len(install_steps(plan))), plan)

    # -- the worker thread --------------------------------------------------------------------------

    def _run(self, plan: SetupPlan) -> None:
        plan.env_dir.mkdir(parents=True, exist_ok=True)
        (plan.env_dir / READY_FILE).unlink(missing_ok=True)  # ready again only once every step passed
        log_path = plan.env_dir.parent / LOG_FILE
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                self._update(step=1, title="Creating the engine's Python environment")
                self._create_env(plan, log)
                output = ""
                for number, step in enumerate(install_steps(plan), start=2):
                    self._update(step=number, title=step.title, package="")
                    output = self._run_step(step, log)
                info = _probe_result(output)
                info["wheel_sha256"] = hashlib.sha256(plan.wheel.read_bytes()).hexdigest()
                (plan.env_dir / READY_FILE).write_text(json.dumps(info, indent=2))
            self._update(phase="done", message=ready_line(info))
        except Cancelled:
            self._update(phase="cancelled", message="Engine setup cancelled; press Set up engine to finish it.")
        except SetupError as error:
            self._update(phase="failed", message=f"{error} (details: {log_path})")
        except OSError as error:
            self._update(phase="failed", message=f"Engine setup failed: {error}.")

    def _create_env(self, plan: SetupPlan, log) -> None:
        python = env_python(plan.env_dir)
        if python.is_file() and _runs(str(python)):
            return  # an environment from an earlier press: the pip steps finish or repair it
        for candidate in plan.base_pythons:
            if not _is_python311(candidate):
                continue
            shutil.rmtree(plan.env_dir, ignore_errors=True)
            try:
                self._run_step(Step("Creating the engine's Python environment",
                                    (candidate, "-m", "venv", str(plan.env_dir))), log)
            except SetupError:
                continue  # e.g. a Python without the venv module: try the next one
            if python.is_file():
                return
        raise SetupError(f"No Python {PYTHON_VERSION[0]}.{PYTHON_VERSION[1]} that can make a virtual environment "
                         f"was found (Blender's own Python is {sys.version_info[0]}.{sys.version_info[1]}): "
                         "install Python 3.11 from python.org and press Set up engine again")

    def _run_step(self, step: Step, log) -> str:
        """Run one command, feeding its output to the progress; its output, or SetupError."""
        progress = PipProgress()
        base = self.snapshot().downloaded_bytes

        def on_line(line: str) -> None:
            progress.feed(line)
            with self._lock:
                if not line.startswith("Progress "):
                    self._state.log.append(line.rstrip())
                self._state.package = progress.package
                self._state.downloaded_bytes = base + progress.downloaded_bytes

        code, lines = self._runner.run(step.command, on_line, log, env=dict(os.environ, PIP_NO_COLOR="1"))
        if code != 0:
            raise SetupError(f"{step.title} failed: {_last_error(lines)}")
        return "".join(lines)


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import sys"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _is_python311(python: str) -> bool:
    try:
        probe = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.stdout.strip() == "True"


def _probe_result(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("HEADSCULPT-PROBE "):
            return json.loads(line[len("HEADSCULPT-PROBE "):])
    raise SetupError("The engine was installed but does not start")


def _last_error(lines: list[str]) -> str:
    """pip's own reason: its last "ERROR:" line, else its last line."""
    errors = [line.strip() for line in lines if line.startswith("ERROR:")]
    text = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
    return text.removeprefix("ERROR: ")


SETUP = EngineSetup()
