"""Write a small, deterministic COCO-format instance-segmentation dataset.

Every image shows one to four solid-coloured shapes on a noisy grey
background; the class is the shape (circle, square, triangle, diamond), and
each class has its own hue (jittered), so a detector can learn it in a few
hundred iterations. Shapes never overlap, so every instance mask is exactly
the shape's rasterised area.

Layout written under ``OUT`` (the one mmdet's ``CocoDataset`` configs use)::

    OUT/annotations/instances_train2017.json
    OUT/annotations/instances_val2017.json
    OUT/train2017/000000000001.png ...
    OUT/val2017/000000100001.png ...

Instance masks alternate between the two COCO encodings: polygons
(``[[x0, y0, x1, y1, ...]]``) and compressed RLE (``{'size': [h, w],
'counts': str}``), all with ``iscrowd = 0``.

Example:
    python tools/data/make_coco.py data/demo_coco --num-train 32 \
        --num-val 8 --size 128 128 --seed 0
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from shapes import (SHAPE_COLOURS, SHAPES, check_dataset_size,
                    parse_dataset_args, shape_polygon)

CATEGORIES = SHAPES
# Base RGB colour of each category (jittered per instance).
CATEGORY_COLOURS = tuple(SHAPE_COLOURS[c] for c in CATEGORIES)
MAX_PLACEMENT_TRIES = 50


def rasterise(polygon: list[tuple[float, float]], height: int,
              width: int) -> np.ndarray:
    """Binary mask of a polygon, drawn the same way as the image.

    Args:
        polygon: ``(x, y)`` vertices.
        height: Image height.
        width: Image width.

    Returns:
        ``(height, width)`` uint8 array of 0/1.
    """
    canvas = Image.new('L', (width, height), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=np.uint8)


def make_image(rng: np.random.Generator, height: int, width: int,
               first_annotation_id: int, image_id: int
               ) -> tuple[Image.Image, list[dict]]:
    """Draw one image and its instance annotations.

    Args:
        rng: Random generator (advanced in place).
        height: Image height.
        width: Image width.
        first_annotation_id: Id of the first annotation of this image.
        image_id: COCO id of the image.

    Returns:
        The RGB image and its COCO annotation dicts.
    """
    background = rng.normal(110, 12, size=(height, width, 3))
    pixels = np.clip(background, 0, 255).astype(np.uint8)
    occupied = np.zeros((height, width), dtype=bool)
    annotations = []
    num_objects = int(rng.integers(1, 5))
    min_radius = max(4.0, min(height, width) / 12)
    max_radius = max(min_radius + 1, min(height, width) / 4)
    for _ in range(num_objects):
        for _ in range(MAX_PLACEMENT_TRIES):
            label = int(rng.integers(len(CATEGORIES)))
            radius = float(rng.uniform(min_radius, max_radius))
            centre_x = float(rng.uniform(radius + 1, width - radius - 1))
            centre_y = float(rng.uniform(radius + 1, height - radius - 1))
            polygon = shape_polygon(CATEGORIES[label], centre_x, centre_y,
                                    radius)
            mask = rasterise(polygon, height, width).astype(bool)
            # Keep the bounding boxes (plus a pixel) apart so that shapes
            # never touch and every mask stays the whole shape.
            rows, cols = np.nonzero(mask)
            if not occupied[max(rows.min() - 1, 0):rows.max() + 2,
                            max(cols.min() - 1, 0):cols.max() + 2].any():
                break
        else:
            continue
        occupied[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        colour = np.clip(
            np.array(CATEGORY_COLOURS[label]) + rng.integers(-25, 26, 3), 0,
            255)
        pixels[mask] = colour.astype(np.uint8)
        annotation_id = first_annotation_id + len(annotations)
        if annotation_id % 2:
            segmentation = [[round(c, 2) for xy in polygon for c in xy]]
            # Area and box as COCO's own rasteriser sees the polygon.
            rle = mask_utils.merge(
                mask_utils.frPyObjects(segmentation, height, width))
        else:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            segmentation = dict(size=[height, width],
                                counts=rle['counts'].decode('ascii'))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        annotations.append(
            dict(id=annotation_id, image_id=image_id, category_id=label + 1,
                 segmentation=segmentation,
                 area=float(mask_utils.area(rle)), bbox=[x, y, w, h],
                 iscrowd=0))
    return Image.fromarray(pixels), annotations


def write_split(out_dir: Path, split: str, num_images: int, height: int,
                width: int, rng: np.random.Generator,
                first_image_id: int) -> Path:
    """Write the images and the annotation file of one split.

    Args:
        out_dir: Dataset root.
        split: ``'train2017'`` or ``'val2017'``.
        num_images: Number of images.
        height: Image height.
        width: Image width.
        rng: Random generator.
        first_image_id: COCO id of the split's first image.

    Returns:
        Path of the written annotation json.
    """
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image_id = first_image_id + index
        file_name = f'{image_id:012d}.png'
        image, image_annotations = make_image(rng, height, width,
                                              len(annotations) + 1, image_id)
        image.save(image_dir / file_name)
        images.append(dict(id=image_id, file_name=file_name, height=height,
                           width=width))
        annotations.extend(image_annotations)
    categories = [dict(id=k + 1, name=name, supercategory='shape')
                  for k, name in enumerate(CATEGORIES)]
    ann_file = out_dir / 'annotations' / f'instances_{split}.json'
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(
        json.dumps(dict(images=images, annotations=annotations,
                        categories=categories)))
    return ann_file


def make_coco(out_dir: Path, num_train: int = 32, num_val: int = 8,
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
    write_split(out_dir, 'train2017', num_train, height, width, rng, 1)
    write_split(out_dir, 'val2017', num_val, height, width, rng, 100001)


def main() -> None:
    """Write the dataset given on the command line."""
    args = parse_dataset_args(__doc__.split('\n')[0], 32, 8)
    make_coco(args.out, args.num_train, args.num_val, tuple(args.size),
              args.seed)
    print(f'COCO-format dataset written to {args.out} '
          f'({args.num_train} train / {args.num_val} val images, '
          f'{len(CATEGORIES)} categories)')


if __name__ == '__main__':
    main()
