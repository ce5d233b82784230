"""Per-sensor anomaly models, one job a module.

``fitting``    StandardScaler + OneClassSVM per sensor: nu, the anomaly threshold, ``train_models``
``pack``       the plain-array ``.npz`` format models are stored in (never a pickle)
``registry``   versions, manifests, indexes and aliases in the models container; loading with hash checks
``training``   a range's windows -> a registered version (the command-line path)
``evaluation`` flagged share and precision/recall/F1 on labels; ``promotion`` the gate, alias history, rollback
``stats``      the training distribution a model's hourly health is judged against

The arrays a model is scored with (``ModelArrays``) belong to ``sensor_scoring.scorer``, which evaluates them.
"""
