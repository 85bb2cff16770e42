"""Pneumonia classification: the one training loop (serial, DDP, FSDP2), its models, augmentation, prefetch,
parallel plan, checkpoints, metrics and evaluation.

    config.py      sectioned dataclasses for a training run
    train.py       the training loop and evaluation
    parallel.py    the plan (serial | ddp | fsdp, batch arithmetic) and the wrap functions
    models.py      the reference study's small CNN and resnet18
    augment.py     albumentations pipeline, per-sample seeds, tensors
    prefetch.py    the next batch augmented in an idle-priority thread
    checkpoint.py  atomic save, load and resume (DCP for FSDP)
    metrics.py     scikit-learn metrics, the operating threshold
    commands.py    the click commands (click-only imports)
"""
