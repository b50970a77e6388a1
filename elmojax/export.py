"""``export``: the standard ELMo files of a training run, which bilm-tf and AllenNLP load unchanged."""

from __future__ import annotations

from pathlib import Path

import jax

from elmojax.data.tokenizers import copy_record
from elmojax.fileio import check_writable_dir
from elmojax.model.weights import save_weights
from elmojax.train.checkpoints import load_run, restore_params


def export_run(save_dir: str | Path, outfile: str | Path) -> Path:
    """Write the latest checkpoint's biLM as a weights HDF5 in bilm-tf's layout, with ``options.json``
    (``n_characters`` 262) and ``vocab.txt`` beside it; each file is written atomically."""
    options, vocab = load_run(save_dir)
    params, _ = restore_params(save_dir, options=options)
    outfile = Path(outfile)
    check_writable_dir(outfile.parent)
    save_weights({"params": jax.device_get(params["bilm"])}, options, outfile)
    options.save(outfile.parent / "options.json", for_export=True)
    vocab.save(outfile.parent / "vocab.txt")
    copy_record(save_dir, outfile.parent)  # embed --tokenize cuts raw text as the corpus was cut
    return outfile
