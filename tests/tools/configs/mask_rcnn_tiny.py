# The flagship Mask R-CNN config shrunk for CPU tests on the shapes dataset
# of tools/data/make_coco.py: 64x64 images, 4 classes, 2 images per batch,
# 2 epochs, evaluation and a checkpoint after every epoch. Training is
# deterministic (no flip, every anchor/proposal sampled, no drop-path) so a
# resumed run can be compared with an uninterrupted one value for value.
# Tests derive a config from this one that sets data_root, the backbone and
# neck.in_channels.
_base_ = ['../../../configs/mask_rcnn_v2m_s_1x.py']

metainfo = dict(classes=('circle', 'square', 'triangle', 'diamond'))
image_scale = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        metainfo=metainfo,
        pipeline=train_pipeline,
        filter_cfg=dict(filter_empty_gt=True, min_size=0)))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

# Narrow heads and few proposals keep a CPU iteration well under a second.
model = dict(
    neck=dict(out_channels=16),
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=16),
        bbox_head=dict(in_channels=16, fc_out_channels=32, num_classes=4),
        mask_roi_extractor=dict(out_channels=16),
        mask_head=dict(
            in_channels=16, conv_out_channels=16, num_convs=1,
            num_classes=4)),
    train_cfg=dict(
        rpn=dict(sampler=dict(num=4096)),
        rpn_proposal=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(sampler=dict(num=4096))),
    test_cfg=dict(
        rpn=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(max_per_img=20)))
train_cfg = dict(max_epochs=2)
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=2))
log_processor = dict(window_size=1)
randomness = dict(seed=0)
