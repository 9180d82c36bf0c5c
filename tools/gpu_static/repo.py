"""Kernel sources of the working tree or of a git commit, and the block shapes of the network.

A recorded GPU run names the commit its kernels ran at; the report compiles that version (``git archive``
into the cache) so a fit stays valid after the kernels are rewritten.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import io

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("MNV2_GPU_STATIC_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "mnv2_gpu_static"))
# What a kernel version is made of: every file under these repo paths.
KERNEL_PATHS = ("mnv2_kernels", "csrc/cuda", "csrc/common")


def source_dir(commit: str | None, root: str = ROOT) -> str:
    """Directory holding the kernel sources: the working tree (commit None) or `commit`'s tree, extracted
    once into the cache (``git archive``). Raises RuntimeError when git cannot produce the commit."""
    if commit is None:
        return root
    full = subprocess.run(["git", "-C", root, "rev-parse", "--verify", commit + "^{commit}"],
                          capture_output=True, text=True)
    if full.returncode != 0:
        raise RuntimeError(f"gpu_static: commit {commit!r} of a recorded GPU run is not in this clone "
                           f"({full.stderr.strip()}); fetch the full history (git fetch --unshallow)")
    sha = full.stdout.strip()
    dest = os.path.join(CACHE, "src", sha[:12])
    if os.path.isfile(os.path.join(dest, ".complete")):
        return dest
    paths = [p for p in KERNEL_PATHS
             if subprocess.run(["git", "-C", root, "cat-file", "-e", f"{sha}:{p}"], capture_output=True).returncode == 0]
    data = subprocess.run(["git", "-C", root, "archive", "--format=tar", sha] + paths, capture_output=True,
                          check=True).stdout
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="data")
    open(os.path.join(dest, ".complete"), "w").close()
    return dest


def tree_hash(src: str, sub: str) -> str:
    """sha256 over the relative paths and contents of every file under src/sub (sorted); '' if absent."""
    h = hashlib.sha256()
    base = os.path.join(src, sub)
    if not os.path.isdir(base):
        return ""
    for d, dirs, files in os.walk(base):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith((".pyc", ".so")):
                continue
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, src).encode() + b"\0")
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def git_head(root: str = ROOT) -> str:
    r = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def mobilenet_v2_blocks(root: str = ROOT, image: int = 224):
    """The distinct inverted-residual block shapes of MobileNetV2 at `image` x `image` input, from the
    package's one block table (mnv2_kernels/models/block_table.py, derived from the model definition),
    loaded without running mnv2_kernels/__init__.py. Returns [dict(name, cin, chid, cout, h, w, stride,
    has_expand, residual)], repeated blocks merged under one name ("5-6")."""
    import importlib
    import sys
    import types
    saved = {k: v for k, v in sys.modules.items() if k == "mnv2_kernels" or k.startswith("mnv2_kernels.")}
    for k in saved:
        del sys.modules[k]
    pkg = types.ModuleType("mnv2_kernels")
    pkg.__path__ = [os.path.join(root, "mnv2_kernels")]
    sys.modules["mnv2_kernels"] = pkg
    try:
        table = importlib.import_module("mnv2_kernels.models.block_table").mobilenet_v2_blocks(image)
    finally:
        for k in [k for k in sys.modules if k == "mnv2_kernels" or k.startswith("mnv2_kernels.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return [dict(name=b.name, cin=b.cin, chid=b.chid, cout=b.cout, h=b.h, w=b.h, stride=b.stride,
                 has_expand=bool(b.expand), residual=bool(b.residual)) for b in table]
