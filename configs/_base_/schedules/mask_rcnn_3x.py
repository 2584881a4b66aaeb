# The papers' Mask R-CNN 3x recipe: as 1x (AdamW lr 1e-4, weight decay 0.05
# except norms and embeddings, batch 16, 1000-iteration warm-up) but 36
# epochs with lr x0.1 after epochs 27 and 33. Pair it with the multi-scale
# crop training of datasets/coco_instance_ms_crop.py.
_base_ = './mask_rcnn_1x.py'

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1),
]
