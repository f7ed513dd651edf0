"""Export run files to the dashboards people use: TensorBoard and W&B (docs/export.md).

`python -m gradsweep.export tensorboard|wandb PATH...` exports runs already
written; `gradsweep.export.callback.ExportRuns`, a Hydra callback, exports each
run as it finishes. tensorboard and wandb are optional extras, imported on use.
"""
