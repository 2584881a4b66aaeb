# The flagship-family UPerNet config shrunk for CPU tests on the shapes
# dataset of tools/data/make_ade20k.py: 64x64 crops, BN instead of SyncBN
# (CPU, gloo), narrow heads, 4 iterations with evaluation and a checkpoint
# every 2. Tests derive a config from this one that sets data_root and the
# backbone.
_base_ = ['../../../configs/upernet_v2m_s_160k_ade20k.py']

crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(128, 64),
        ratio_range=(0.75, 1.25),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale_factor=ratio, keep_ratio=True)
                for ratio in (0.75, 1.0)
            ],
            [
                dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                dict(type='RandomFlip', prob=1.0, direction='horizontal'),
            ],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='PackSegInputs')],
        ]),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(channels=16, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=16, norm_cfg=norm_cfg))
train_cfg = dict(max_iters=4, val_interval=2)
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=2, max_keep_ckpts=2))
randomness = dict(seed=0)
