# mmpretrain's ImageNet-1k pipeline (Swin's: RandAugment, random erasing),
# AdamW schedule and runtime, with mmssm's models registered: the base of
# every ImageNet-1k config of mmssm.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmssm.models'], allow_failed_imports=False)

model = dict(type='ImageClassifier')
