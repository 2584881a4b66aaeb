"""Parameters and FLOPs of an mmssm model, scan ops included.

Counts with mmengine's ``FlopAnalyzer`` (fvcore's jit-trace counter: one
multiply-add of a linear or conv layer is one FLOP, as the papers count) with
handles for mmssm's scan ops; see ``mmssm/models/utils/flops.py`` for how the
scan ops become single traced nodes and the per-op rule (9·B·L·D·N per
selective scan, + B·L·D per D skip and per z gate).

MODEL is a config file (the whole mmpretrain/mmdet/mmseg model, or its
backbone with ``--backbone-only``) or ``Type[:arch]`` of a registered mmssm
backbone, measured with a global-average-pool + linear classifier of
``--num-classes`` classes (0: the bare backbone). Weights stay at their
random initialisation; a two-stage detector's RoI heads are counted for the
proposals its RPN keeps on the random input (as mmdet's own tool does).

Published 224x224 counts: VMamba-T/S/B 4.906 / 8.716 / 15.359 G, equal to
the authors' 4.9 / 8.7 / 15.4 G (their fvcore setup, whose scan rule this
tool uses). Vim-T/S (``--backbone-kwargs '{"out_indices": [-1],
"pyramid_strides": null}'``) count 1.823 / 5.912 G against the published
1.5 / 5.1 G, which come from LocalMamba's analytic formula (5·L·D·N per scan
and one direction's x_proj/dt_proj; it gives 1.475 / 5.118 G). See
``tests/tools/test_get_flops.py`` for V2M and V2M*.

Examples:
    python tools/analysis/get_flops.py VMamba:tiny
    python tools/analysis/get_flops.py V2MPyramid:small --shape 512 512
    python tools/analysis/get_flops.py \
        configs/upernet_vmamba_t_160k_ade20k.py --shape 512 2048 \
        --backbone-only
"""
import argparse
import json
from typing import List, Optional

from mmengine.analysis import parameter_count
from mmengine.analysis.print_helper import complexity_stats_table

from mmssm.models.utils.flops import (analysis_inputs, analyze_flops,
                                      build_analysis_model)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments (``argv`` for tests; None reads sys.argv)."""
    parser = argparse.ArgumentParser(
        description='Parameters and FLOPs of an mmssm model.')
    parser.add_argument(
        'model', help='config file (*.py) or Type[:arch], e.g. VMamba:tiny')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[224, 224],
        help='input size: H W, or one value for a square image')
    parser.add_argument(
        '--num-classes',
        type=int,
        default=1000,
        help='classes of the probe head of a Type[:arch] model (0: backbone '
        'only)')
    parser.add_argument(
        '--backbone-only',
        action='store_true',
        help='for a config: measure model.backbone only')
    parser.add_argument(
        '--backbone-kwargs',
        type=json.loads,
        default={},
        help='JSON dict of extra backbone arguments, e.g. '
        '\'{"out_indices": [3]}\'')
    parser.add_argument(
        '--max-depth',
        type=int,
        default=2,
        help='module depth of the printed table (0: no table)')
    parser.add_argument(
        '--run-scans',
        action='store_true',
        help='run the scan ops while tracing (by default they return zeros '
        'of their output shape, which gives the same count, much faster)')
    return parser.parse_args(argv)


def _image_size(shape: List[int]) -> tuple:
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    raise ValueError(f'--shape takes 1 or 2 values (H W), got {shape}')


def get_flops(model_spec: str,
              shape: tuple = (224, 224),
              num_classes: int = 1000,
              backbone_only: bool = False,
              run_scans: bool = False,
              max_depth: int = 2,
              backbone_kwargs: Optional[dict] = None) -> dict:
    """Counts the parameters and FLOPs of a model for one image.

    Args:
        model_spec: Config file or ``Type[:arch]`` (see the module doc).
        shape: Image ``(H, W)``.
        num_classes: Probe-head classes of a ``Type[:arch]`` model; 0 for the
            bare backbone.
        backbone_only: For a config, measure ``model.backbone`` only.
        run_scans: Run the scan ops while tracing.
        max_depth: Depth of the per-module table; 0 for none.
        backbone_kwargs: Extra keyword arguments of the backbone.

    Returns:
        ``flops`` (int), ``params`` (int), ``by_operator`` (dict op ->
        FLOPs), ``uncounted_ops`` (dict op -> calls that no handle counts)
        and ``table`` (str).
    """
    model = build_analysis_model(
        model_spec,
        num_classes=num_classes or None,
        backbone_only=backbone_only,
        backbone_kwargs=backbone_kwargs)
    module, inputs = analysis_inputs(model, *shape)
    analyzer = analyze_flops(module, inputs, run_scans=run_scans)
    table = (complexity_stats_table(analyzer, max_depth=max_depth)
             if max_depth > 0 else '')
    return dict(
        flops=int(analyzer.total()),
        params=int(parameter_count(model)['']),
        by_operator={k: int(v)
                     for k, v in analyzer.by_operator().items()},
        uncounted_ops=dict(analyzer.unsupported_ops()),
        table=table)


def main(argv: Optional[List[str]] = None) -> dict:
    """Runs the tool and prints its report.

    Args:
        argv: Command-line arguments; None reads ``sys.argv``.

    Returns:
        The result of :func:`get_flops`.
    """
    args = parse_args(argv)
    shape = _image_size(args.shape)
    result = get_flops(args.model, shape, args.num_classes,
                       args.backbone_only, args.run_scans, args.max_depth,
                       args.backbone_kwargs)
    if result['table']:
        print(result['table'])
    by_op = ', '.join(f'{op} {flops / 1e9:.3f}G'
                      for op, flops in sorted(result['by_operator'].items(),
                                              key=lambda item: -item[1]))
    uncounted = ', '.join(f'{op} x{calls}'
                          for op, calls in sorted(
                              result['uncounted_ops'].items()))
    print(f'Model: {args.model}\nInput shape: {shape[0]}x{shape[1]}\n'
          f'Params: {result["params"] / 1e6:.3f} M\n'
          f'FLOPs: {result["flops"] / 1e9:.3f} G (fvcore convention: '
          f'multiply-adds of linear/conv layers)\n'
          f'By operator: {by_op}\n'
          f'Not counted (elementwise, by convention): {uncounted or "none"}')
    return result


if __name__ == '__main__':
    main()
