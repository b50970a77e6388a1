"""The standard ELMo weights HDF5 (bilm-tf ``dump_weights`` layout) <-> linen parameter trees.

Reading accepts both the 261-row ``char_embed`` of exported files and tables that already hold the
padding row (262 rows); writing always produces the exported layout, so ``file -> params -> file``
is bit for bit. Every dataset is checked against the shape the options imply; a mismatch raises
:class:`~elmojax.errors.WeightsError` naming the file, the dataset and both shapes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from elmojax.errors import WeightsError
from elmojax.fileio import atomic_path
from elmojax.options import N_CHARACTERS, ElmoOptions

_RNN_PREFIX = "RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/"


def standard_datasets(
    options: ElmoOptions, n_dirs: int = 2
) -> Iterator[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """Every tensor of the standard weights file: (HDF5 dataset name, parameter path, file shape)."""
    p, lstm = options.projection_dim, options.lstm
    c = options.char_cnn
    if c is not None:
        emb = ("token_embedder",)
        yield "char_embed", (*emb, "char_embed"), (N_CHARACTERS - 1, c.embedding_dim)
        for i, (width, num) in enumerate(c.filters):
            yield f"CNN/W_cnn_{i}", (*emb, "CNN", f"W_cnn_{i}"), (1, width, c.embedding_dim, num)
            yield f"CNN/b_cnn_{i}", (*emb, "CNN", f"b_cnn_{i}"), (num,)
        f = c.n_filters
        for k in range(c.n_highway):
            for name, shape in (
                ("W_carry", (f, f)),
                ("b_carry", (f,)),
                ("W_transform", (f, f)),
                ("b_transform", (f,)),
            ):
                yield f"CNN_high_{k}/{name}", (*emb, f"CNN_high_{k}", name), shape
        if f != p:
            yield "CNN_proj/W_proj", (*emb, "CNN_proj", "W_proj"), (f, p)
            yield "CNN_proj/b_proj", (*emb, "CNN_proj", "b_proj"), (p,)
    else:
        yield "embedding", ("token_embedder", "embedding"), (options.require_vocab_size(), p)
    has_proj = lstm.projection_dim < lstm.dim
    out_dim = p if has_proj else lstm.dim
    for d in range(n_dirs):
        for layer in range(lstm.n_layers):
            prefix = _RNN_PREFIX.format(d=d, l=layer)
            path = (f"RNN_{d}", f"Cell{layer}")
            yield prefix + "W_0", (*path, "W_0"), (p + out_dim, 4 * lstm.dim)
            yield prefix + "B", (*path, "B"), (4 * lstm.dim,)
            if has_proj:
                yield prefix + "W_P_0", (*path, "W_P_0"), (lstm.dim, p)


def _has_padding_row(name: str) -> bool:
    return name in ("char_embed", "embedding")


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> np.ndarray:
    for key in path:
        tree = tree[key]
    return np.asarray(tree)


def load_weights(path: str | Path, options: ElmoOptions) -> dict:
    """Read a weights HDF5 into ``{"params": ...}`` for :class:`elmojax.model.bilm.BiLM` (numpy arrays)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, expected an HDF5 weights file")
    try:
        fin = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(
            f"{path}: not a readable HDF5 file ({e}); is it truncated or of another format?"
        ) from None
    params: dict = {}
    with fin:
        for name, param_path, shape in standard_datasets(options):
            if name not in fin or not isinstance(fin[name], h5py.Dataset):
                raise WeightsError(
                    f"{path}: dataset '{name}' is missing; the file does not match the options "
                    f"(char_cnn/lstm sizes) or is not an ELMo weights file"
                )
            ds = fin[name]
            found = tuple(ds.shape)
            padded = _has_padding_row(name) and found == (shape[0] + 1, *shape[1:])
            if found != shape and not padded:
                raise WeightsError(
                    f"{path}: dataset '{name}' has shape {found}, expected {shape} from the options; "
                    "check that options.json belongs to this weights file"
                )
            if not np.issubdtype(ds.dtype, np.floating):
                raise WeightsError(f"{path}: dataset '{name}' has dtype {ds.dtype}, expected float32")
            try:
                value = ds[...]
            except OSError as e:
                raise WeightsError(
                    f"{path}: dataset '{name}' cannot be read ({e}); the file may be truncated"
                ) from None
            value = value.astype(np.float32, copy=False)
            if not np.all(np.isfinite(value)):
                warnings.warn(f"{path}: dataset '{name}' contains NaN or Inf values", stacklevel=2)
            if _has_padding_row(name) and not padded:
                value = np.concatenate([np.zeros((1, value.shape[1]), np.float32), value])
            _set(params, param_path, value)
    return {"params": params}


def save_weights(params: dict, options: ElmoOptions, path: str | Path) -> None:
    """Write a biLM parameter tree (``{"params": ...}`` or the inner dict) as the standard HDF5.

    The file is built in memory and written under a temporary name, then renamed, so a crash or a
    full disk never leaves a partial file under ``path`` (and a full disk is a plain write error:
    HDF5 cannot close a file it failed to write). Softmax weights are not part of this format.
    """
    tree = params.get("params", params)
    image = io.BytesIO()
    with h5py.File(image, "w", track_order=True) as fout:
        for name, param_path, shape in standard_datasets(options):
            value = np.asarray(_get(tree, param_path), dtype=np.float32)
            if _has_padding_row(name):
                value = value[1:]  # drop the padding row: readers prepend it
            if value.shape != shape:
                raise WeightsError(f"{path}: parameter '{name}' has shape {value.shape}, expected {shape}")
            fout.create_dataset(name, data=value)
    with atomic_path(path) as tmp:
        tmp.write_bytes(image.getbuffer())
