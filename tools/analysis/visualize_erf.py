"""Effective receptive field (ERF) of a backbone's central output pixel.

The method of RepLKNet (Ding et al., 2022) that VMamba's Figure 5 uses: for
every input image ``x`` the gradient of the central pixel of one output map,
``sum_c relu(F(x)[c, h/2, w/2])``, is taken with respect to ``x``; its
positive part, summed over the input channels, is each input pixel's
contribution. Contributions are averaged over the images and saved as a heat
map of ``log10(1 + 1000 · ERF / max ERF) / log10(1001)`` (three decades, from
0 to 1), so models and checkpoints of any gradient scale compare on one
colour scale. The tool also prints the high-contribution area ratios: the
area fraction of the smallest centred square holding t% of the total
contribution (RepLKNet's measure; larger = more global).

Inputs are random (standard normal images, the default) or real images from
``--images DIR`` (resized to ``--shape`` and normalised with the ImageNet mean
and std). ``--checkpoint`` loads weights into the backbone with its
``load_pretrained`` (any checkpoint format its family converts); without it
the backbone keeps its random initialisation.

MODEL is a config file (its ``model.backbone`` is used) or ``Type[:arch]`` of
a registered mmssm backbone.

Examples:
    python tools/analysis/visualize_erf.py VMamba:tiny --out erf_random.png
    python tools/analysis/visualize_erf.py VMamba:tiny --images val_imgs/ \
        --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth --out erf_trained.png
"""
import argparse
import json
import math
import os
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssm.models.utils.flops import build_analysis_model

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')
AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments (``argv`` for tests; None reads sys.argv)."""
    parser = argparse.ArgumentParser(
        description='Effective receptive field of a backbone.')
    parser.add_argument(
        'model', help='config file (*.py) or Type[:arch], e.g. VMamba:tiny')
    parser.add_argument('--checkpoint', help='weights of the backbone')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[1024, 1024],
        help='input size: H W, or one value for a square image')
    parser.add_argument('--num-images', type=int, default=50)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument(
        '--images', help='folder of real images (default: random inputs)')
    parser.add_argument(
        '--out-index',
        type=int,
        default=-1,
        help='which backbone output to take the central pixel of')
    parser.add_argument(
        '--backbone-kwargs',
        type=json.loads,
        default={},
        help='JSON dict of extra backbone arguments')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default='erf.png', help='PNG file to write')
    return parser.parse_args(argv)


def random_images(num_images: int, batch_size: int, shape: Tuple[int, int],
                  seed: int) -> Iterator[Tensor]:
    """Batches of standard-normal images (a normalised image's statistics).

    Args:
        num_images: Images in total.
        batch_size: Images per batch (the last batch may be smaller).
        shape: ``(H, W)``.
        seed: Seed of the generator.

    Yields:
        ``(b, 3, H, W)`` float tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, num_images, batch_size):
        size = min(batch_size, num_images - start)
        yield torch.randn(size, 3, *shape, generator=generator)


def folder_images(folder: str, num_images: int, batch_size: int,
                  shape: Tuple[int, int]) -> Iterator[Tensor]:
    """Batches of real images, resized and ImageNet-normalised.

    Args:
        folder: Folder of ``.jpg``/``.jpeg``/``.png``/``.bmp`` files (sorted
            by name; the first ``num_images`` are used).
        num_images: Images to use.
        batch_size: Images per batch.
        shape: ``(H, W)``.

    Yields:
        ``(b, 3, H, W)`` float tensors.
    """
    import mmcv
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_SUFFIXES))
    if len(names) < num_images:
        raise ValueError(f'--images {folder} holds {len(names)} images, '
                         f'fewer than --num-images {num_images}')
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    batch = []
    for name in names[:num_images]:
        image = mmcv.imread(osp.join(folder, name), channel_order='rgb')
        image = mmcv.imresize(image, (shape[1], shape[0]))
        tensor = torch.from_numpy(image).permute(2, 0, 1).float()
        batch.append((tensor - mean) / std)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def compute_erf(backbone: nn.Module,
                batches: Iterator[Tensor],
                out_index: int = -1,
                device: str = 'cpu') -> np.ndarray:
    """Mean contribution of every input pixel to the central output pixel.

    Args:
        backbone: Returns a tuple of NCHW maps.
        batches: Input image batches.
        out_index: Which output map to take the central pixel of.
        device: Device to run on.

    Returns:
        ``(H, W)`` float64 array: the positive part of the input gradient of
        the central pixel's summed positive activations, summed over input
        channels, averaged over the images.
    """
    backbone.eval()
    total, count = None, 0
    for images in batches:
        images = images.to(device).requires_grad_()
        outputs = backbone(images)
        if not isinstance(outputs, (tuple, list)):
            raise TypeError('the backbone must return a tuple of NCHW maps, '
                            f'got {type(outputs).__name__}')
        feature = outputs[out_index]
        if feature.dim() != 4:
            raise ValueError(f'output {out_index} must be an NCHW map, got '
                             f'shape {tuple(feature.shape)}')
        centre = feature[:, :, feature.shape[2] // 2, feature.shape[3] // 2]
        (grad, ) = torch.autograd.grad(F.relu(centre).sum(), images)
        contribution = F.relu(grad).sum(dim=(0, 1)).double().cpu()
        total = contribution if total is None else total + contribution
        count += images.shape[0]
    if count == 0:
        raise ValueError('no input images were given')
    return (total / count).numpy()


def high_contribution_area_ratio(erf: np.ndarray, threshold: float) -> float:
    """Area fraction of the smallest centred square holding ``threshold``.

    Args:
        erf: ``(H, W)`` non-negative contributions.
        threshold: Share of the total contribution, in ``(0, 1]``.

    Returns:
        The square's area (clipped to the map) over the map's area.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f'threshold must be in (0, 1], got {threshold}')
    height, width = erf.shape
    total = erf.sum()
    if total <= 0:
        raise ValueError('the ERF is zero everywhere: no pixel contributes')
    centre_y, centre_x = height // 2, width // 2
    for radius in range(max(height, width)):
        top, left = max(centre_y - radius, 0), max(centre_x - radius, 0)
        window = erf[top:centre_y + radius + 1, left:centre_x + radius + 1]
        if window.sum() >= threshold * total * (1 - 1e-12):
            return window.size / erf.size
    return 1.0


def erf_heat_map(erf: np.ndarray) -> np.ndarray:
    """The ERF on a three-decade log scale in ``[0, 1]`` (see module doc)."""
    peak = erf.max()
    if peak <= 0:
        raise ValueError('the ERF is zero everywhere: no pixel contributes')
    return np.log10(1 + 1e3 * erf / peak) / math.log10(1 + 1e3)


def save_heat_map(erf: np.ndarray, path: str, title: str) -> None:
    """Writes the ERF heat map as a PNG (like VMamba's Figure 5).

    Args:
        erf: ``(H, W)`` contributions.
        path: PNG file to write.
        title: Title above the map.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(5, 4.4))
    image = axes.imshow(
        erf_heat_map(erf), cmap='RdYlGn', vmin=0, vmax=1,
        interpolation='nearest')
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    directory = osp.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=150)
    plt.close(figure)


def _image_size(shape: Sequence[int]) -> Tuple[int, int]:
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(f'--shape takes 1 or 2 values (H W), got {shape}')


def main(argv: Optional[List[str]] = None) -> dict:
    """Computes, saves and summarises the ERF.

    Args:
        argv: Command-line arguments; None reads ``sys.argv``.

    Returns:
        ``erf`` (the array), ``area_ratios`` (threshold -> ratio) and
        ``path`` of the PNG.
    """
    args = parse_args(argv)
    shape = _image_size(args.shape)
    if args.num_images < 1 or args.batch_size < 1:
        raise ValueError('--num-images and --batch-size must be >= 1')
    backbone = build_analysis_model(
        args.model,
        num_classes=None,
        backbone_only=True,
        backbone_kwargs=args.backbone_kwargs).to(args.device)
    if args.checkpoint:
        if not hasattr(backbone, 'load_pretrained'):
            raise TypeError(f'{type(backbone).__name__} is not an mmssm '
                            'backbone: it cannot load --checkpoint')
        backbone.load_pretrained(args.checkpoint)
    batches = (folder_images(args.images, args.num_images, args.batch_size,
                             shape) if args.images else random_images(
                                 args.num_images, args.batch_size, shape,
                                 args.seed))
    erf = compute_erf(backbone, batches, args.out_index, args.device)
    ratios = {t: high_contribution_area_ratio(erf, t) for t in AREA_THRESHOLDS}
    weights = (osp.basename(args.checkpoint)
               if args.checkpoint else 'random init')
    inputs = f'{args.num_images} images' if args.images else (
        f'{args.num_images} random inputs')
    save_heat_map(erf, args.out,
                  f'{args.model} ({weights}), {inputs}, '
                  f'{shape[0]}x{shape[1]}')
    print(f'ERF saved to {args.out}\nHigh-contribution area ratio: ' +
          ', '.join(f'{int(t * 100)}%: {r:.4f}' for t, r in ratios.items()))
    return dict(erf=erf, area_ratios=ratios, path=args.out)


if __name__ == '__main__':
    main()
