# The papers' Mask R-CNN 1x recipe (Swin's, followed by VMamba and V2M):
# 12 epochs, AdamW lr 1e-4, weight decay 0.05 except norms and embeddings,
# batch 16 (8 GPUs x 2), linear warm-up over 1000 iterations, lr x0.1 after
# epochs 8 and 11.
max_epochs = 12
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.0),
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
        }))
# The learning rate above is for a total batch of 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
