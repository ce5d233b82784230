"""The pack format: the fitted arrays of up to ``PACK_SIZE`` models in one ``.npz``, read with ``allow_pickle=False``.

Loading is parsing numbers, never unpickling, so a planted file cannot execute anything; each model's arrays have a
SHA-256 (``ModelArrays.digest``) in its version's index, checked by the registry before use.
"""

from __future__ import annotations

import io

import numpy as np

from sensor_scoring.scorer import ModelArrays

PACK_SIZE = 1000


ARRAY_FIELDS = ("mean", "scale", "gamma", "intercept", "sv_offsets", "sv", "dual")


class ModelIntegrityError(ValueError):
    """A stored model whose bytes do not match the registry's hash, or that is not plain numbers."""


def pack_bytes(models: list[ModelArrays]) -> bytes:
    """The ``.npz`` bytes of up to ``PACK_SIZE`` models: plain arrays, all support vectors concatenated."""
    sizes = np.array([len(m.dual_coef) for m in models])
    arrays = {
        "mean": np.stack([m.mean for m in models]),
        "scale": np.stack([m.scale for m in models]),
        "gamma": np.array([m.gamma for m in models]),
        "intercept": np.array([m.intercept for m in models]),
        "sv_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "sv": np.concatenate([m.support_vectors for m in models]),
        "dual": np.concatenate([m.dual_coef for m in models]),
        "threshold": np.array([m.threshold for m in models]),
    }
    sink = io.BytesIO()
    np.savez(sink, allow_pickle=False, **arrays)  # numbers only; loading refuses pickles too
    return sink.getvalue()


def unpack(data: bytes) -> list[ModelArrays]:
    """Models of one pack; ``allow_pickle=False`` makes numpy refuse anything but plain arrays."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in ARRAY_FIELDS}
            # packs written before calibrated thresholds have none: threshold 0, scikit-learn's predict
            arrays["threshold"] = npz["threshold"] if "threshold" in npz.files else np.zeros(len(arrays["gamma"]))
    except (ValueError, KeyError, OSError, EOFError) as exc:
        raise ModelIntegrityError(f"model pack is not a plain-array pack: {exc}") from exc
    offsets = arrays["sv_offsets"]
    return [
        ModelArrays(
            mean=arrays["mean"][i],
            scale=arrays["scale"][i],
            support_vectors=arrays["sv"][offsets[i] : offsets[i + 1]],
            dual_coef=arrays["dual"][offsets[i] : offsets[i + 1]],
            intercept=float(arrays["intercept"][i]),
            gamma=float(arrays["gamma"][i]),
            threshold=float(arrays["threshold"][i]),
        )
        for i in range(len(arrays["gamma"]))
    ]
