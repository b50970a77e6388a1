"""Turn a bilm-tf training checkpoint (dumped by bilmtf_driver.py ``dump``) into an elmojax run directory.

    python convert_bilmtf.py --weights W.hdf5 --softmax S.npz --options CFG.json --vocab vocab.txt \
        --train-prefix GLOB --run-dir OUT [--metrics bilmtf_metrics.jsonl]

OUT gets ``options.json`` (as ``elmojax train`` writes it: n_tokens_vocab and n_train_tokens
filled in), ``vocab.txt``, and an orbax checkpoint at bilm-tf's global step whose parameters are
``{"bilm": <the HDF5 read by elmojax.weights.load_weights>, "softmax": {"W", "b"} from the TF
checkpoint}``, saved as ``elmojax.train.train`` saves. The optimiser state and LSTM states in it are
fresh (evaluation reads only the parameters). Run with the elmojax venv.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from elmojax.data.vocab import Vocabulary
from elmojax.model.weights import load_weights
from elmojax.options import load_options
from elmojax.parallel import DataParallel
from elmojax.train.checkpoints import checkpoint_manager
from elmojax.train.loop import TrainConfig, prepare_options
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--softmax", required=True)
    ap.add_argument("--options", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--train-prefix", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--metrics", default=None)
    a = ap.parse_args()
    run = Path(a.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    vocab = Vocabulary.from_file(a.vocab).require_specials()
    options = prepare_options(load_options(a.options), TrainConfig(str(run), a.train_prefix), vocab)
    options.save(run / "options.json")
    vocab.save(run / "vocab.txt")
    if a.metrics:
        shutil.copyfile(a.metrics, run / "metrics.jsonl")
    bilm = load_weights(a.weights, options)
    sm = np.load(a.softmax)
    step = int(sm["global_step"])
    par = DataParallel(options.training.batch_size)
    state = par.put_state(
        init_state(StepConfig(options, len(vocab)), par.global_rows, jax.random.PRNGKey(0), bilm)
    )
    w, b = jnp.asarray(sm["W"], jnp.float32), jnp.asarray(sm["b"], jnp.float32)
    old = state.params["softmax"]
    assert w.shape == old["W"].shape and b.shape == old["b"].shape, (w.shape, old["W"].shape)
    params = {"bilm": state.params["bilm"], "softmax": {"W": w, "b": b}}
    params = jax.device_put(params, NamedSharding(par.mesh, P()))
    state = state.replace(params=params, step=jnp.asarray(step, jnp.int32))
    mngr = checkpoint_manager(run)
    data = {"converted_from_bilmtf": {"weights": str(a.weights), "softmax": str(a.softmax), "step": step}}
    mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)),
        force=True,
    )
    mngr.wait_until_finished()
    print(json.dumps({"run_dir": str(run), "step": step}))


if __name__ == "__main__":
    main()
