"""bilm-tf side of the zero-state study; run with the TensorFlow venv's python (TF_USE_LEGACY_KERAS=1).

    python bilmtf_driver.py BILMTF_DIR train OPTIONS TRAIN_GLOB VOCAB SAVE_DIR STEPS SEED
    python bilmtf_driver.py BILMTF_DIR dump SAVE_DIR OUT_H5 OUT_SOFTMAX_NPZ
    python bilmtf_driver.py BILMTF_DIR test SAVE_DIR TEST_GLOB VOCAB BATCH_SIZE

``train`` drives ``bilm.training.train`` unchanged for exactly STEPS batches (n_train_tokens =
STEPS * batch * unroll, one epoch) with python ``random``, numpy and TF's graph seed set to SEED.
The per-direction training losses are not part of bilm-tf's logs, so the session's ``run`` is
wrapped to fetch ``individual_losses`` alongside each training step (the step itself is unchanged);
they go to SAVE_DIR/metrics.jsonl every 10 steps, as elmojax logs them. ``dump`` writes the
standard weights HDF5 (bilm-tf's ``dump_weights``) and the softmax ``W``/``b`` from the checkpoint.
``test`` runs bilm-tf's own ``bilm.training.test`` and prints ``TEST_PERPLEXITY <value>``.
"""

import json
import os
import random
import sys
import time


def _train(bilm_dir, options_file, train_glob, vocab_file, save_dir, steps, seed):
    import bilm.training as bt
    import numpy as np
    import tensorflow.compat.v1 as tf
    from bilm.data import BidirectionalLMDataset

    random.seed(seed)
    np.random.seed(seed)
    tf.set_random_seed(seed)
    opts = json.load(open(options_file))
    vocab = bt.load_vocab(
        vocab_file, opts["char_cnn"]["max_characters_per_token"] if "char_cnn" in opts else None
    )
    if "char_cnn" in opts:
        opts["char_cnn"]["n_characters"] = 261
    opts["n_tokens_vocab"] = vocab.size
    opts["n_epochs"] = 1
    opts["n_train_tokens"] = steps * opts["batch_size"] * opts["unroll_steps"]
    data = BidirectionalLMDataset(train_glob, vocab, test=False, shuffle_on_load=True)
    os.makedirs(save_dir, exist_ok=True)

    models = []
    orig_lm = bt.LanguageModel

    class RecordingLM(orig_lm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            models.append(self)

    bt.LanguageModel = RecordingLM
    log = open(os.path.join(save_dir, "metrics.jsonl"), "w")
    state = {"step": 0, "t0": time.time()}
    orig_run = tf.Session.run

    def run(self, fetches, feed_dict=None, **kw):
        training = (
            isinstance(fetches, list)
            and models
            and feed_dict is not None
            and models[0].next_token_id in feed_dict
        )
        if not training:
            return orig_run(self, fetches, feed_dict=feed_dict, **kw)
        ret, losses = orig_run(self, [fetches, models[0].individual_losses], feed_dict=feed_dict, **kw)
        state["step"] += 1
        s = state["step"]
        if s % 10 == 0 or s == 1 or s == steps:
            rec = {
                "step": s,
                "loss_forward": float(losses[0]),
                "loss_backward": float(losses[-1]),
                "train_perplexity": float(ret[2]),
                "elapsed_s": time.time() - state["t0"],
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
        return ret

    tf.Session.run = run
    t = time.time()
    bt.train(opts, data, 1, save_dir, save_dir)
    print("WALL", time.time() - t, "STEPS", state["step"])
    log.close()


def _dump(bilm_dir, save_dir, out_h5, out_npz):
    import numpy as np
    import tensorflow.compat.v1 as tf
    from bilm.training import dump_weights

    dump_weights(save_dir, out_h5)
    ckpt = tf.train.latest_checkpoint(save_dir)
    names = dict(tf.train.list_variables(ckpt))
    assert "lm/softmax/W" in names and "lm/softmax/b" in names, sorted(names)
    np.savez(
        out_npz,
        W=tf.train.load_variable(ckpt, "lm/softmax/W"),
        b=tf.train.load_variable(ckpt, "lm/softmax/b"),
        global_step=np.array(tf.train.load_variable(ckpt, "global_step")),
    )
    print("CKPT", ckpt)


def _test(bilm_dir, save_dir, test_glob, vocab_file, batch_size):
    from bilm.data import BidirectionalLMDataset
    from bilm.training import load_options_latest_checkpoint, load_vocab, test

    options, ckpt = load_options_latest_checkpoint(save_dir)
    max_chars = options["char_cnn"]["max_characters_per_token"] if "char_cnn" in options else None
    vocab = load_vocab(vocab_file, max_chars)
    data = BidirectionalLMDataset(test_glob, vocab, test=True, shuffle_on_load=False)
    ppl = test(options, ckpt, data, batch_size=batch_size)
    print("TEST_PERPLEXITY", float(ppl))


def main():
    bilm_dir, cmd, *rest = sys.argv[1:]
    sys.path.insert(0, bilm_dir)
    if cmd == "train":
        options_file, train_glob, vocab_file, save_dir, steps, seed = rest
        _train(bilm_dir, options_file, train_glob, vocab_file, save_dir, int(steps), int(seed))
    elif cmd == "dump":
        _dump(bilm_dir, *rest)
    elif cmd == "test":
        save_dir, test_glob, vocab_file, batch_size = rest
        _test(bilm_dir, save_dir, test_glob, vocab_file, int(batch_size))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
