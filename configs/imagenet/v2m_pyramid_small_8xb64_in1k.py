# V2M-S* (pyramid V2M, VMamba-T [s1l8] layout) on ImageNet-1k from scratch:
# papers/v2m.txt Table 1 (82.9 top-1, 30 M parameters) with the paper's
# recipe (section 4.1): AdamW lr 5e-4 at batch 512 (8 GPUs x 64), weight
# decay 0.05, 300 epochs, cosine schedule, label smoothing, mixup, random
# erasing; drop path 0.2 as VMamba-T.
_base_ = ['./vmamba_tiny_8xb128_in1k.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmssm.V2MPyramid',
        arch='small',
        out_indices=(3, ),
        drop_path_rate=0.2),
    head=dict(in_channels=768))

train_dataloader = dict(batch_size=64)
val_dataloader = dict(batch_size=64)
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=5e-4))
auto_scale_lr = dict(base_batch_size=512)
