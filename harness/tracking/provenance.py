"""What a number depends on besides its recipe: the code version and the software."""

from __future__ import annotations

import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

import harness
from harness.tracking.schema import Tag

_REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def git_sha() -> str:
    """Return the commit of the code, with ``-dirty`` when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=_REPO, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if status else sha


def environment_tags() -> dict[str, str]:
    """Return tags that pin down the software a run used."""
    return {
        Tag.GIT_SHA: git_sha(),
        Tag.VERSION: harness.__version__,
        Tag.TORCH_VERSION: torch.__version__,
        Tag.PYTHON_VERSION: platform.python_version(),
        Tag.HOST: socket.gethostname(),
    }
