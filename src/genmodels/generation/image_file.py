"""Writing one image file (``genmodels sample --out``, :func:`genmodels.generation.images.save_grid`, a
run's ``samples.png``), and refusing a target before any image is made.

- **The format follows the suffix**: ``.png`` (lossless, the default) or ``.jpg`` / ``.jpeg`` (JPEG,
  quality 95), in any case. Any other name, and an empty one, is refused naming ``--out`` and these.
- **Only our own files are replaced.** Every image genmodels writes carries a mark: the PNG text chunk
  ``Software: genmodels``, or the JPEG comment ``genmodels``. An existing file at the target that has
  the mark (a previous ``genmodels sample``, a run's grid) is replaced; any other file is refused
  unless ``overwrite=True`` (``--overwrite``). A folder at the target is refused whatever the flag.
- **A symbolic link is written through**: the file it points to is the target (checked as above) and
  is replaced; the link stays (``files.write_target``).
- **Missing parent folders are created**; a parent that is a file is refused, naming it.
- The write itself is ``files.atomic_write``: whole or not at all, mode 0o666 & ~umask, and a full
  disk named as such on the file being written.
"""
from __future__ import annotations

import io
from pathlib import Path

from ..files import atomic_write_bytes, check_parents, write_target

SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
MARK = "genmodels"
_ALLOWED = ", ".join(SUFFIXES)

__all__ = ["MARK", "SUFFIXES", "check_image_target", "write_image"]


def written_by_genmodels(file: Path) -> bool:
    """Whether ``file`` is an image genmodels wrote (it carries :data:`MARK`)."""
    from PIL import Image
    try:
        with Image.open(file) as im:  # reads the header and the text chunks before the pixels
            return im.info.get("Software") == MARK or im.info.get("comment") == MARK.encode()
    except Exception:  # noqa: BLE001 - Pillow's errors for a file it cannot read: not one of ours
        return False


def check_image_target(path: str | Path, overwrite: bool = False, flag: str = "--out",
                       overwrite_flag: str | None = "--overwrite") -> Path:
    """The file a write of an image to ``path`` would replace or create (through a symbolic link);
    ValueError / FileExistsError naming ``flag`` for a name, place or existing file it may not use
    (module docstring). ``overwrite_flag``: the command's flag that lifts the refusal of another file
    (None for a command without one: the refusal then offers only another name)."""
    text = str(path)
    if not text:
        raise ValueError(f"{flag} '' names no file: give an image file name ending in {_ALLOWED}")
    if Path(text).suffix.lower() not in SUFFIXES or text.endswith(("/", "\\")):
        raise ValueError(f"{flag} {text}: the image format follows the suffix; give a name ending in {_ALLOWED}")
    target = write_target(text)
    if target.is_dir():
        raise FileExistsError(f"{flag} {text} is a folder; give an image file name ending in {_ALLOWED}")
    check_parents(target, f"{flag} {text}")
    if (target.exists() or target.is_symlink()) and not overwrite:
        if not target.is_file() or not written_by_genmodels(target):
            shown = text if target == Path(text) else f"{text} (a link to {target})"
            lift = f"pass {overwrite_flag} (overwrite=True) to replace it, or " if overwrite_flag else ""
            raise FileExistsError(f"{flag} {shown} already exists and genmodels did not write it; {lift}choose "
                                  "another name")
    return target


def write_image(image, path: str | Path, overwrite: bool = False) -> Path:
    """Write the Pillow ``image`` to ``path`` in the format its suffix names, with :data:`MARK`, atomically
    (module docstring); returns ``path``."""
    target = check_image_target(path, overwrite)
    buf = io.BytesIO()
    if SUFFIXES[Path(path).suffix.lower()] == "PNG":
        from PIL.PngImagePlugin import PngInfo
        info = PngInfo()
        info.add_text("Software", MARK)
        image.save(buf, format="PNG", pnginfo=info)
    else:
        image.save(buf, format="JPEG", quality=95, comment=MARK)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buf.getvalue())
    return Path(path)
