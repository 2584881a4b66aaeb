"""tools/data/make_ade20k.py: deterministic data in ADE20K's layout."""
from pathlib import Path

import numpy as np
import pytest
from make_ade20k import (BACKGROUND_CLASS, SHAPE_CLASSES, SHAPE_COLOURS,
                         make_ade20k)
from PIL import Image


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_layout_and_determinism(tmp_path: Path) -> None:
    make_ade20k(tmp_path / 'a', num_train=3, num_val=2, size=(40, 56), seed=1)
    make_ade20k(tmp_path / 'b', num_train=3, num_val=2, size=(40, 56), seed=1)
    make_ade20k(tmp_path / 'c', num_train=3, num_val=2, size=(40, 56), seed=2)
    first = tree_bytes(tmp_path / 'a')
    assert first == tree_bytes(tmp_path / 'b')
    assert first != tree_bytes(tmp_path / 'c')
    assert sorted(first) == sorted(
        [f'images/training/ADE_train_{i:08d}.jpg' for i in (1, 2, 3)] +
        [f'annotations/training/ADE_train_{i:08d}.png' for i in (1, 2, 3)] +
        [f'images/validation/ADE_val_{i:08d}.jpg' for i in (1, 2)] +
        [f'annotations/validation/ADE_val_{i:08d}.png' for i in (1, 2)])


def test_labels_follow_ade20k_conventions(tmp_path: Path) -> None:
    make_ade20k(tmp_path, num_train=16, num_val=1, size=(64, 64), seed=0)
    seen = set()
    for label_file in sorted((tmp_path / 'annotations' / 'training').glob(
            '*.png')):
        label = Image.open(label_file)
        assert label.mode == 'L'
        labels = np.asarray(label)
        image = np.asarray(
            Image.open(tmp_path / 'images' / 'training' /
                       label_file.with_suffix('.jpg').name))
        assert image.shape == (64, 64, 3) and labels.shape == (64, 64)
        values = set(np.unique(labels).tolist())
        assert values <= {0, BACKGROUND_CLASS, *SHAPE_CLASSES.values()}
        assert 0 in values and BACKGROUND_CLASS in values
        assert (labels[-1] == 0).all()  # the ignored band at the bottom
        seen |= values
        for shape, class_index in SHAPE_CLASSES.items():
            region = labels == class_index
            # Interior pixels only: JPEG blurs the shapes' borders.
            interior = region[1:-1, 1:-1] & region[:-2, 1:-1] & region[
                2:, 1:-1] & region[1:-1, :-2] & region[1:-1, 2:]
            if interior.sum() < 10:
                continue
            colour = image[1:-1, 1:-1][interior].mean(axis=0)
            assert np.abs(colour - SHAPE_COLOURS[shape]).max() < 40
    assert seen == {0, BACKGROUND_CLASS, *SHAPE_CLASSES.values()}
    assert max(SHAPE_CLASSES.values()) == 150


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='size must be at least 32x32'):
        make_ade20k(tmp_path, size=(31, 64))
