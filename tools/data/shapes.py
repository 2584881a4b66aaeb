"""The solid shapes both dataset writers draw (COCO and ADE20K layouts)."""
import math

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
