# The papers' UPerNet recipe on ADE20K: 160k iterations, AdamW lr 6e-5,
# weight decay 0.01 except norms and embeddings, batch 16 (8 GPUs x 2),
# linear warm-up over 1500 iterations then linear ("poly", power 1) decay
# to 0. Validation and checkpoints every 16k iterations.
max_iters = 160000
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'norm': dict(decay_mult=0.0),
            'pos_embed': dict(decay_mult=0.0),
            'cls_token': dict(decay_mult=0.0),
        }))
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=max_iters,
        by_epoch=False),
]
