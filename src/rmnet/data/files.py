"""Files that appear whole or not at all, and folders that remember how their contents were made."""

from __future__ import annotations

import json
import os
from fnmatch import fnmatch
from pathlib import Path

from PIL import Image

from rmnet.io import TEMPORARY_PATTERN, atomic_write, temporary_path

__all__ = [
    "TEMPORARY_PATTERN",
    "claim_folder",
    "refuse_foreign_folder",
    "remove_abandoned_temporaries",
    "save_image_atomically",
    "temporary_path",
]


def save_image_atomically(image: Image.Image, path: Path, **options) -> Path:
    """``image.save(path, **options)`` through a temporary file (``format=`` is required)."""
    return atomic_write(path, lambda temporary: image.save(temporary, **options))


def remove_abandoned_temporaries(folder: Path) -> None:
    """Delete temporary files left under ``folder`` by writers that are no longer running
    (a killed run); those of live processes (another rank caching the same folder) stay."""
    for path in folder.rglob(TEMPORARY_PATTERN):
        pid = path.name.rsplit(".", 2)[-2]
        if not (pid.isdigit() and _running(int(pid))):
            path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    if os.name == "nt":  # no signal 0 there (os.kill would end the process): keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def refuse_foreign_folder(folder: Path, manifest_name: str) -> None:
    """Refuse a folder that holds files but no ``manifest_name``: someone else's files, which a
    command must not write among (nor overwrite)."""
    if (folder / manifest_name).exists() or not folder.exists():
        return
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder; choose an empty or new folder")
    if any(not fnmatch(p.name, TEMPORARY_PATTERN) for p in folder.iterdir()):
        raise ValueError(f"{folder} is not empty and has no {manifest_name}; choose an empty or new folder")


def claim_folder(folder: Path, manifest_name: str, recipe: dict) -> None:
    """Record ``recipe`` in ``folder/manifest_name``; refuse a folder made with another recipe, or
    one holding other files, so that files made in different ways never mix. Safe when several
    processes (e.g. torchrun ranks) claim the same folder at once: the first manifest wins."""
    manifest = folder / manifest_name
    if not manifest.exists():
        refuse_foreign_folder(folder, manifest_name)
        folder.mkdir(parents=True, exist_ok=True)
        temporary = temporary_path(manifest)
        temporary.write_text(json.dumps(recipe, indent=1) + "\n")
        try:
            os.link(temporary, manifest)  # atomic, and fails if another process got there first
        except FileExistsError:
            pass  # compared below
        except OSError:  # a file system without hard links
            os.replace(temporary, manifest)
        finally:
            temporary.unlink(missing_ok=True)
    found = json.loads(manifest.read_text())
    if found != recipe:
        raise ValueError(f"{folder} was made with {found}, not {recipe}; use another folder or delete it")
