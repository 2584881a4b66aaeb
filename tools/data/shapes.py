"""The solid shapes both dataset writers draw (COCO and ADE20K layouts), and
the arguments both take."""
import argparse
import math
from pathlib import Path
from typing import Tuple

#: Shape names, in the order the COCO writer numbers its categories.
SHAPES = ('circle', 'square', 'triangle', 'diamond')
#: Base RGB colour of each shape (jittered per instance by the writers).
SHAPE_COLOURS = dict(circle=(220, 40, 40), square=(40, 180, 60),
                     triangle=(40, 80, 220), diamond=(230, 200, 30))
CIRCLE_VERTICES = 32


def shape_polygon(shape: str, centre_x: float, centre_y: float,
                  radius: float) -> list[tuple[float, float]]:
    """Vertices of one shape, clockwise in image coordinates.

    Args:
        shape: One of ``SHAPES``.
        centre_x: Centre column in pixels.
        centre_y: Centre row in pixels.
        radius: Half the shape's extent in pixels.

    Returns:
        The polygon's ``(x, y)`` vertices.
    """
    if shape == 'circle':
        angles = [2 * math.pi * k / CIRCLE_VERTICES
                  for k in range(CIRCLE_VERTICES)]
    elif shape == 'square':
        angles = [math.pi / 4 + math.pi / 2 * k for k in range(4)]
        radius *= math.sqrt(2)
    elif shape == 'triangle':
        angles = [-math.pi / 2 + 2 * math.pi / 3 * k for k in range(3)]
    elif shape == 'diamond':
        angles = [math.pi / 2 * k for k in range(4)]
    else:
        raise ValueError(f'shape must be one of {SHAPES}, got {shape!r}')
    return [(centre_x + radius * math.cos(a), centre_y + radius * math.sin(a))
            for a in angles]


def check_dataset_size(num_train: int, num_val: int,
                       size: Tuple[int, int]) -> None:
    """Raises ValueError unless both splits have images of at least 32x32.

    Args:
        num_train: Number of training images.
        num_val: Number of validation images.
        size: ``(height, width)`` of every image.
    """
    height, width = size
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be >= 1, got '
                         f'{num_train} and {num_val}')
    if min(height, width) < 32:
        raise ValueError(f'size must be at least 32x32, got {height}x{width}')


def parse_dataset_args(description: str, num_train: int,
                       num_val: int) -> argparse.Namespace:
    """Command line of a dataset writer: ``OUT [--num-train N] [--num-val N]
    [--size H W] [--seed S]``.

    Args:
        description: The script's one-line description.
        num_train: Default number of training images.
        num_val: Default number of validation images.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('out', type=Path, help='dataset root to write')
    parser.add_argument('--num-train', type=int, default=num_train)
    parser.add_argument('--num-val', type=int, default=num_val)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128),
                        metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()
