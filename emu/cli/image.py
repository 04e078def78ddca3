"""Reading the image a user names: an assembly source is assembled, anything else read as bytes."""
from __future__ import annotations


def load_image_bytes(path: str) -> tuple[bytes, str]:
    from emu.errors import ImageError
    if path.endswith((".S", ".s", ".asm")):
        from emu.loader.asm import assemble_source
        return assemble_source(path), path
    try:
        with open(path, "rb") as f:
            return f.read(), path
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}")
