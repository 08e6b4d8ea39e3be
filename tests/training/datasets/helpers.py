"""Image trees the folder and stream tests write themselves."""

from __future__ import annotations

import zipfile
from pathlib import Path

from PIL import Image


def make_images(root: Path) -> dict[str, Image.Image]:
    """Two classes, mixed sizes and modes; returns relative path -> image."""
    pal = Image.new("P", (30, 50))
    pal.putpalette([0, 0, 255] * 256)
    rgba = Image.new("RGBA", (24, 24), (255, 0, 0, 0))  # fully transparent: composited on white
    rgba.paste((255, 0, 0, 255), (0, 0, 24, 12))
    images = {
        "dog/a.png": Image.new("RGB", (40, 20), (255, 0, 0)),
        "dog/nested/b.jpg": Image.new("L", (64, 64), 128),
        "cat/c.png": rgba,
        "cat/d.gif": pal,
        "cat/e.bmp": Image.new("RGB", (16, 16), (0, 255, 0)),
    }
    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
    (root / "cat" / "notes.txt").write_text("not an image")
    return images


def zip_dir(src: Path, dst: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dst, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(src).as_posix())
    return dst
