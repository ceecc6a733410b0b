"""Image grids and contact sheets (used by corpus previews, training samples and reports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def image_grid(images: list[np.ndarray], cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile equally sized RGB uint8 images (H, W, 3) into rows of ``cols``."""
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), fill, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return grid


def save_image(path: str | Path, image: np.ndarray) -> None:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if str(path).lower().endswith((".jpg", ".jpeg")) else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), params):
        raise OSError(f"could not write {path}")
