"""Write a small, deterministic dataset in ADE20K's folder layout.

Layout written under ``OUT`` (the one mmseg's ``ADE20KDataset`` reads)::

    OUT/images/training/ADE_train_00000001.jpg
    OUT/annotations/training/ADE_train_00000001.png
    OUT/images/validation/ADE_val_00000001.jpg
    OUT/annotations/validation/ADE_val_00000001.png

Labels follow ADE20K's convention: 0 means "other"/unlabelled and 1..150
are the classes; with ``reduce_zero_label=True`` mmseg maps 0 to the
ignore index 255 and class k to k - 1. Every image has a textured
background of class ``BACKGROUND_CLASS``, a band of label 0 along its bottom
edge (to exercise the ignore path), and one to four solid-coloured shapes
whose class is the shape (see ``SHAPE_CLASSES``; class 150 is among them to
exercise the last index). Each class has its own hue, so a segmentor can
learn it.

Example:
    python tools/data/make_ade20k.py data/demo_ade20k --num-train 16 \
        --num-val 4 --size 128 128
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shapes import (SHAPE_COLOURS, check_dataset_size, parse_dataset_args,
                    shape_polygon)

BACKGROUND_CLASS = 1
# ADE20K class index (1..150) of each shape.
SHAPE_CLASSES = dict(circle=13, square=3, triangle=42, diamond=150)
IGNORE_BAND_FRACTION = 0.0625
JPEG_QUALITY = 95


def make_sample(rng: np.random.Generator, height: int,
                width: int) -> tuple[Image.Image, Image.Image]:
    """Draw one image and its label map.

    Args:
        rng: Random generator (advanced in place).
        height: Image height.
        width: Image width.

    Returns:
        The RGB image and the ``'L'``-mode label image (values 0..150).
    """
    background = rng.normal(110, 12, size=(height, width, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    label = Image.new('L', (width, height), BACKGROUND_CLASS)
    image_draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(label)
    shapes = tuple(SHAPE_CLASSES)
    min_radius = max(4.0, min(height, width) / 12)
    max_radius = max(min_radius + 1, min(height, width) / 4)
    for _ in range(int(rng.integers(1, 5))):
        shape = shapes[int(rng.integers(len(shapes)))]
        radius = float(rng.uniform(min_radius, max_radius))
        centre_x = float(rng.uniform(radius + 1, width - radius - 1))
        centre_y = float(rng.uniform(radius + 1, height - radius - 1))
        polygon = shape_polygon(shape, centre_x, centre_y, radius)
        colour = np.clip(
            np.array(SHAPE_COLOURS[shape]) + rng.integers(-25, 26, 3), 0, 255)
        image_draw.polygon(polygon, fill=tuple(int(c) for c in colour))
        label_draw.polygon(polygon, fill=SHAPE_CLASSES[shape])
    band = max(1, int(round(height * IGNORE_BAND_FRACTION)))
    label_draw.rectangle((0, height - band, width - 1, height - 1), fill=0)
    return image, label


def write_split(out_dir: Path, split: str, prefix: str, num_images: int,
                height: int, width: int, rng: np.random.Generator) -> None:
    """Write the images and label maps of one split.

    Args:
        out_dir: Dataset root.
        split: ``'training'`` or ``'validation'``.
        prefix: File-name prefix (``'ADE_train'`` or ``'ADE_val'``).
        num_images: Number of images.
        height: Image height.
        width: Image width.
        rng: Random generator.
    """
    image_dir = out_dir / 'images' / split
    label_dir = out_dir / 'annotations' / split
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for index in range(1, num_images + 1):
        image, label = make_sample(rng, height, width)
        stem = f'{prefix}_{index:08d}'
        image.save(image_dir / f'{stem}.jpg', quality=JPEG_QUALITY)
        label.save(label_dir / f'{stem}.png')


def make_ade20k(out_dir: Path, num_train: int = 16, num_val: int = 4,
                size: tuple[int, int] = (128, 128), seed: int = 0) -> None:
    """Write the whole dataset (both splits).

    Args:
        out_dir: Dataset root to create.
        num_train: Number of training images.
        num_val: Number of validation images.
        size: ``(height, width)`` of every image.
        seed: Seed of the generator; the output is a function of the
            arguments only.
    """
    check_dataset_size(num_train, num_val, size)
    height, width = size
    rng = np.random.default_rng(seed)
    write_split(out_dir, 'training', 'ADE_train', num_train, height, width,
                rng)
    write_split(out_dir, 'validation', 'ADE_val', num_val, height, width, rng)


def main() -> None:
    """Write the dataset given on the command line."""
    args = parse_dataset_args(__doc__.split('\n')[0], 16, 4)
    make_ade20k(args.out, args.num_train, args.num_val, tuple(args.size),
                args.seed)
    print(f'ADE20K-layout dataset written to {args.out} '
          f'({args.num_train} training / {args.num_val} validation images)')


if __name__ == '__main__':
    main()
