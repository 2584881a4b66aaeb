"""tools/data/make_coco.py: deterministic, valid COCO instance annotations."""
from pathlib import Path

import numpy as np
import pytest
from make_coco import CATEGORIES, CATEGORY_COLOURS, make_coco
from PIL import Image
from pycocotools.coco import COCO


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    make_coco(tmp_path / 'a', num_train=3, num_val=2, size=(48, 64), seed=3)
    make_coco(tmp_path / 'b', num_train=3, num_val=2, size=(48, 64), seed=3)
    make_coco(tmp_path / 'c', num_train=3, num_val=2, size=(48, 64), seed=4)
    first = tree_bytes(tmp_path / 'a')
    assert first == tree_bytes(tmp_path / 'b')
    assert first != tree_bytes(tmp_path / 'c')
    assert len([k for k in first if k.startswith('train2017/')]) == 3
    assert len([k for k in first if k.startswith('val2017/')]) == 2


def test_annotations_match_the_drawn_shapes(tmp_path: Path) -> None:
    make_coco(tmp_path, num_train=12, num_val=2, size=(96, 80), seed=0)
    coco = COCO(str(tmp_path / 'annotations' / 'instances_train2017.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(
        CATEGORIES)
    annotations = coco.loadAnns(coco.getAnnIds())
    kinds = {type(a['segmentation']).__name__ for a in annotations}
    assert kinds == {'list', 'dict'}  # polygons and RLE
    assert {a['category_id'] for a in annotations} == {1, 2, 3, 4}
    for image_info in coco.loadImgs(coco.getImgIds()):
        image = np.asarray(
            Image.open(tmp_path / 'train2017' / image_info['file_name']))
        assert image.shape == (96, 80, 3)
        covered = np.zeros((96, 80), dtype=int)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_info['id'])):
            mask = coco.annToMask(ann).astype(bool)
            covered += mask
            assert ann['iscrowd'] == 0
            assert ann['area'] == pytest.approx(mask.sum())
            rows, cols = np.nonzero(mask)
            x, y, w, h = ann['bbox']
            assert (x, y) == (cols.min(), rows.min())
            assert (x + w, y + h) == (cols.max() + 1, rows.max() + 1)
            # The class is learnable: the shape is painted in its hue.
            colour = image[mask].mean(axis=0)
            expected = np.array(CATEGORY_COLOURS[ann['category_id'] - 1])
            assert np.abs(colour - expected).max() < 40
        assert covered.max() <= 1  # instances never overlap


@pytest.mark.parametrize('kwargs', [
    dict(num_train=0), dict(num_val=0), dict(size=(16, 64))])
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError, match='num_train|size'):
        make_coco(tmp_path, **kwargs)
