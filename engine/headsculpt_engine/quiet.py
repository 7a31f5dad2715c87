"""A quiet console: a run prints the project's own sentences and progress bars, not the libraries' logs,
bars and warnings (transformers' weight-loading bars, MediaPipe's native TensorFlow Lite lines, numpy
warnings inside trimesh), which mean nothing to an artist and bury the progress that does.

`quiet_console()` runs once at the start of every `headsculpt` command; `quiet_model_libraries()` just
before diffusers and transformers load or save models; `native_stderr_silenced()` around MediaPipe,
whose C++ core writes to the process's stderr directly.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Read by the libraries when they are first imported, so they are set before any of them is.
LIBRARY_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow Lite inside MediaPipe
    "GLOG_minloglevel": "2",  # MediaPipe's glog: errors only
}


def quiet_console() -> None:
    """Library log levels and warning filters for a command-line run (the user's own settings win)."""
    for name, value in LIBRARY_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # Warnings raised inside libraries are about their internals (deprecations, all-NaN reductions in
    # trimesh's bounds of empty parts); the project reports its own problems as sentences, not warnings.
    for category in (DeprecationWarning, FutureWarning, UserWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category)


def quiet_model_libraries() -> None:
    """No weight-loading or shard-writing bars from transformers and diffusers (the stages show their own)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 to the null device for the duration; Python's
    own `sys.stderr` is flushed first so nothing of ours is lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded or captured): nothing to do
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
