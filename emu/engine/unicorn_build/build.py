"""Builds svmemu's Unicorn engine: the official unicorn 2.1.4 source distribution, fetched by pip
from the package index and checked against a pinned sha256, with the patches of this folder
applied, configured for x86 only. The Python binding stays the stock unicorn==2.1.4 package; it
loads this library (loader.py points LIBUNICORN_PATH at it before anything imports unicorn).

Idempotent: the library is cached per user, under a key made of the source's sha256, the patches
and this recipe, so a rebuild happens only when one of them changes. Usable three ways:

    python -m emu.engine.unicorn_build [--jobs N] [--force]   # build (or report the cached one)
    setup.py (`pip install -e .`): build_engine(optional=True)  # failure -> stock engine
    loader.py: built_library()                                 # only looks, never builds

Needs cmake, make and a C compiler (about 1 minute on 2 cores); without them the build fails
with one line saying which is missing, and svmemu runs on the stock wheel's library.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

try:       # every start hashes the patch set: hashlib's import alone loads OpenSSL (~2 ms)
    from _sha256 import sha256
except ImportError:      # the builtin module's name differs across Python versions
    from hashlib import sha256

UNICORN_VERSION = "2.1.4"
# sha256 of unicorn-2.1.4.tar.gz as the package index serves it (pip download --no-binary :all:)
SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
SDIST_NAME = f"unicorn-{UNICORN_VERSION}.tar.gz"
LIB_NAME = "libunicorn.so.2"
# Bump when the way the library is built changes (flags, targets), so caches are not reused.
RECIPE = "cmake -DUNICORN_ARCH=x86 -DCMAKE_BUILD_TYPE=Release -DUNICORN_BUILD_TESTS=OFF; v1"
CMAKE_ARGS = ("-DUNICORN_ARCH=x86", "-DCMAKE_BUILD_TYPE=Release", "-DUNICORN_BUILD_TESTS=OFF")

HERE = Path(__file__).resolve().parent


class BuildError(Exception):
    """The engine could not be built; the message is one line saying why."""


def patches() -> list[Path]:
    """The patch set, applied in name order."""
    return sorted(HERE.glob("*.patch"))


def patchset_id() -> str:
    """Names this engine: the source's hash, every patch (name and diff) and the recipe. It is
    the cache key and what `svmemu --version` prints. A patch's description (the text before
    its diff) is left out: rewording it changes no byte of the library."""
    h = sha256()
    h.update(SDIST_SHA256.encode())
    h.update(RECIPE.encode())
    for p in patches():
        text = p.read_bytes()
        start = text.find(b"diff --git ")
        h.update(p.name.encode() + b"\0" + text[max(start, 0):] + b"\0")
    return h.hexdigest()[:12]


def cache_root() -> Path:
    """Per-user cache: $SVMEMU_CACHE_DIR, else $XDG_CACHE_HOME/svmemu, else ~/.cache/svmemu."""
    if os.environ.get("SVMEMU_CACHE_DIR"):
        return Path(os.environ["SVMEMU_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "svmemu"


def engine_dir() -> Path:
    return cache_root() / "engine" / f"unicorn-{UNICORN_VERSION}-{patchset_id()}"


def built_library() -> Path | None:
    """The cached library for the current patch set, or None when it has not been built."""
    lib = engine_dir() / LIB_NAME
    return lib if lib.is_file() else None


def __getattr__(name: str) -> object:
    """`shutil` on first use: every start imports this module to find the library, and shutil
    brings bz2 and lzma along (~2 ms), which only a build needs."""
    if name == "shutil":
        import shutil
        return shutil
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _missing_tools() -> list[str]:
    import shutil
    missing = [t for t in ("cmake", "make") if shutil.which(t) is None]
    if not any(shutil.which(cc) for cc in (os.environ.get("CC") or "cc", "gcc", "clang")):
        missing.append("a C compiler (cc)")
    return missing


def _sha256(path: Path) -> str:
    h = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_commands() -> list[list[str]]:
    """pip, the interpreter's own first. Inside setup.py under pip's build isolation the
    interpreter's PYTHONPATH overlay hides the environment's pip; the child runs without it."""
    import shutil
    cmds = [[sys.executable, "-m", "pip"]]
    for name in ("pip3", "pip"):
        exe = shutil.which(name)
        if exe:
            cmds.append([exe])
    return cmds


def fetch_sdist(dest: Path) -> Path:
    """unicorn-2.1.4.tar.gz, from $SVMEMU_UNICORN_SDIST if set (an offline copy), else by
    `pip download`; verified against SDIST_SHA256 either way."""
    import subprocess
    local = os.environ.get("SVMEMU_UNICORN_SDIST")
    if local:
        sdist = Path(local)
        if not sdist.is_file():
            raise BuildError(f"SVMEMU_UNICORN_SDIST={local}: no such file")
    else:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
        errors = []
        for cmd in _pip_commands():
            r = subprocess.run(cmd + ["download", "--quiet", "--no-binary", ":all:", "--no-deps",
                                      f"unicorn=={UNICORN_VERSION}", "-d", str(dest)],
                               capture_output=True, text=True, env=env)
            sdist = dest / SDIST_NAME
            if r.returncode == 0 and sdist.is_file():
                break
            errors.append((r.stderr.strip().splitlines() or ["?"])[-1])
        else:
            raise BuildError(f"could not download {SDIST_NAME} with pip: {errors[-1]}")
    digest = _sha256(sdist)
    if digest != SDIST_SHA256:
        raise BuildError(f"{sdist} has sha256 {digest}, expected {SDIST_SHA256}")
    return sdist


def _extract(sdist: Path, dest: Path) -> Path:
    import tarfile
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:   # Python < 3.12 without the backported filter: refuse escaping paths ourselves
            for m in tar.getmembers():
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise BuildError(f"{sdist.name}: unsafe path {m.name}")
            tar.extractall(dest)
    src = dest / f"unicorn-{UNICORN_VERSION}" / "src"
    if not (src / "CMakeLists.txt").is_file():
        raise BuildError(f"{sdist.name} has no src/CMakeLists.txt")
    return src


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    import subprocess
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise BuildError(f"`{' '.join(cmd[:2])}` failed ({tail[0].strip()}); log: {log}")


def build(jobs: int = 2, force: bool = False, say=print) -> Path:
    """Builds (or finds) the library and returns its path. Raises BuildError."""
    # Imported here, not at the top: every start imports this module for the cache key alone.
    import shutil
    import tempfile
    from .patching import PatchError, apply_patch
    out = engine_dir()
    lib = out / LIB_NAME
    if lib.is_file() and not force:
        return lib
    missing = _missing_tools()
    if missing:
        raise BuildError("cannot build the engine: missing " + ", ".join(missing))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    log.write_text("")
    with tempfile.TemporaryDirectory(prefix="svmemu-engine-") as tmp:
        work = Path(tmp)
        say(f"svmemu: building the engine (unicorn {UNICORN_VERSION} + {len(patches())} patches, "
            f"id {patchset_id()}) in {out}")
        sdist = fetch_sdist(work)
        src = _extract(sdist, work)
        for p in patches():
            try:
                apply_patch(p.read_text(), src)
            except PatchError as e:
                raise BuildError(f"{p.name}: {e}")
        bdir = work / "build"
        bdir.mkdir()
        _run(["cmake", "-S", str(src), "-B", str(bdir), *CMAKE_ARGS], bdir, log)
        _run(["make", f"-j{max(1, jobs)}", "unicorn"], bdir, log)
        built = bdir / LIB_NAME
        if not built.is_file():
            raise BuildError(f"the build made no {LIB_NAME}; log: {log}")
        tmp_lib = out / (LIB_NAME + ".tmp")
        shutil.copy2(built, tmp_lib)
        os.replace(tmp_lib, lib)     # atomic: a concurrent loader sees all of it or nothing
    (out / "BUILD-INFO").write_text(
        f"unicorn {UNICORN_VERSION} sdist sha256 {SDIST_SHA256}\nrecipe: {RECIPE}\n"
        + "".join(f"patch {p.name} sha256 {_sha256(p)}\n" for p in patches()))
    return lib


def build_engine(optional: bool = True, jobs: int = 2) -> Path | None:
    """For setup.py: build, and on failure say why in one line and leave svmemu on the stock
    engine (optional=True), or raise (optional=False). SVMEMU_ENGINE_BUILD=0 skips it."""
    import subprocess
    if os.environ.get("SVMEMU_ENGINE_BUILD", "1") == "0":
        return None
    try:
        return build(jobs=jobs, say=lambda m: print(m, file=sys.stderr))
    except (BuildError, OSError, subprocess.SubprocessError) as e:
        # OSError: an unwritable cache, a full disk; the install must go on without the engine.
        if not optional:
            raise
        print(f"svmemu: warning: {e}; svmemu will run on the stock unicorn engine",
              file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m emu.engine.unicorn_build",
                                 description="Build svmemu's patched Unicorn engine (cached).")
    ap.add_argument("--jobs", "-j", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--print-path", action="store_true",
                    help="print the cached library's path (status 1 if not built) and exit")
    args = ap.parse_args(argv)
    if args.print_path:
        lib = built_library()
        print(lib if lib else f"not built ({engine_dir()})")
        return 0 if lib else 1
    try:
        print(build(jobs=args.jobs, force=args.force,
                    say=lambda m: print(m, file=sys.stderr)))
    except (BuildError, OSError) as e:
        print(f"svmemu: error: {e}", file=sys.stderr)
        return 1
    return 0
