"""Builds and loads the one-pass statistics kernel (one_pass.c), once per machine.

The shared library is compiled with the system's C compiler into the torch
extensions directory (`TORCH_EXTENSIONS_DIR`, else ~/.cache/torch_extensions),
under a name that hashes the source, the flags, the compiler and the CPU's
features: a sweep's processes (joblib workers, array jobs) build it once between
them and then only load it, and a shared home directory never hands a binary to
a CPU it was not built for. Without a compiler, or when the build fails, or with
GRADSWEEP_ONE_PASS=0 in the environment, `load_kernel` returns None and the
statistics take the torch/numpy path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("one_pass.c")
FLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-fPIC",
    "-shared",
    # reassociating the sums lets them vectorise; NaN and Inf keep their meaning
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
)
DISABLE_ENV = "GRADSWEEP_ONE_PASS"
BUILD_TIMEOUT_S = 120


@dataclass(frozen=True)
class Kernel:
    """The loaded library, where it lies, and what loading it cost this process."""

    library: ctypes.CDLL
    path: Path
    built: bool
    seconds: float


def turned_off() -> bool:
    """True when GRADSWEEP_ONE_PASS=0 turns the one-pass kernels off (the C and the Triton one)."""
    return os.environ.get(DISABLE_ENV, "1") == "0"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _cpu_features() -> str:
    """The CPU's feature flags (Linux), so that -march=native binaries are keyed by CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(compiler: str) -> Path:
    """Where the library for this source, these flags, this compiler and this CPU lies."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    key = "\n".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_features()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / "gradsweep_one_pass" / f"one_pass_{platform.machine()}_{digest}.so"


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside `target`, then rename: concurrent builds are safe."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, "-o", tmp, str(SOURCE)],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT_S,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load_kernel() -> Kernel | None:
    """The kernel, built on first use on this machine; None where it cannot be (see module)."""
    if turned_off():
        return None
    compiler = _compiler()
    if compiler is None:
        return None
    start = time.perf_counter()
    try:
        path = library_path(compiler)
        built = not path.exists()
        if built:
            _build(compiler, path)
        import torch  # noqa: F401 - torch's libgomp first, so the kernel shares its OpenMP runtime

        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    library.gs_one_pass.restype = None
    return Kernel(library, path, built, time.perf_counter() - start)
