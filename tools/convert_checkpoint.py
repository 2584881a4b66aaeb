"""Convert the authors' ImageNet checkpoint to an mmssm backbone checkpoint.

    python tools/convert_checkpoint.py SRC DST [--family F] [--arch A]

The family (vmamba, vim, v2m, mamba2d) is recognised from the file's keys and
the arch found by trying the family's arch zoo, unless given. The report of
every missing, unexpected or shape-mismatched key is printed; the conversion
fails if a backbone parameter would stay uninitialised (unless
--allow-partial). DST loads with ``torch.load(weights_only=True)`` and as
``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
"""
import argparse
import sys

from mmssm.models import convert as convert_lib


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help="the authors' checkpoint file")
    parser.add_argument('dst', help='where to write the mmssm checkpoint')
    parser.add_argument(
        '--family',
        choices=sorted(convert_lib.FAMILY_BACKBONES),
        help='the model family (detected from the keys when omitted)')
    parser.add_argument(
        '--arch', help='the arch name (found from the shapes when omitted)')
    parser.add_argument(
        '--allow-partial',
        action='store_true',
        help='write the file even if backbone parameters stay missing')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = convert_lib.convert_checkpoint_file(
        args.src,
        args.dst,
        family=args.family,
        arch=args.arch,
        allow_partial=args.allow_partial)
    print(report)
    print(f'wrote {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
