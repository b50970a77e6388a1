"""Training streams against hand-computed windows; exact resume; eval counts every token."""

import json

import numpy as np
import pytest

from elmojax.data.chars import Batcher, token_char_ids
from elmojax.data.streams import (
    BidirectionalStream,
    SentenceStream,
    WindowStream,
    count_tokens,
    process_shards,
)
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError

S, E, A, B, C = 0, 1, 3, 4, 5  # ids in the vocabulary below


@pytest.fixture()
def tiny(tmp_path):
    (tmp_path / "shard.txt").write_text("a b\nc a b\n")
    return str(tmp_path / "shard.txt"), Vocabulary(["<S>", "</S>", "<UNK>", "a", "b", "c"])


def windows(pattern, vocab, b, u, n, reverse=False, batcher=None):
    stream = WindowStream(
        SentenceStream(pattern, seed=0, reverse=reverse, shuffle=False), vocab, b, u, batcher
    )
    return [next(stream) for _ in range(n)]


def test_forward_windows_by_hand(tiny):
    w = windows(*tiny, b=1, u=3, n=3)
    assert [x.token_ids.tolist() for x in w] == [[[S, A, B]], [[S, C, A]], [[B, S, A]]]
    assert [x.targets.tolist() for x in w] == [[[A, B, E]], [[C, A, B]], [[E, A, B]]]
    assert all(x.mask.all() for x in w)


def test_backward_windows_by_hand(tiny):
    w = windows(*tiny, b=1, u=3, n=3, reverse=True)
    assert [x.token_ids.tolist() for x in w] == [[[E, B, A]], [[E, B, A]], [[C, E, B]]]
    assert [x.targets.tolist() for x in w] == [[[B, A, S]], [[B, A, C]], [[S, B, A]]]


def test_two_rows_switch_sentences_where_bilm_tf_does(tiny):
    w = windows(*tiny, b=2, u=3, n=2, batcher=Batcher())
    assert w[0].token_ids.tolist() == [[S, A, B], [S, C, A]]
    assert w[1].token_ids.tolist() == [[S, A, B], [B, S, C]]  # row 1 finishes "c a b", then a new sentence
    assert w[1].targets.tolist() == [[A, B, E], [E, C, A]]
    np.testing.assert_array_equal(w[1].char_ids[1, 1], token_char_ids("<S>"))
    np.testing.assert_array_equal(w[1].char_ids[1, 2], token_char_ids("c"))


def write_shards(tmp_path, n_shards=3, per_shard=7):
    for k in range(n_shards):
        lines = [" ".join(f"w{k}_{i}_{j}" for j in range(1 + (i % 4))) for i in range(per_shard)]
        (tmp_path / f"s{k}.txt").write_text("\n".join(lines) + "\n")
    vocab = Vocabulary(["<S>", "</S>", "<UNK>"])
    return str(tmp_path / "s*.txt"), vocab


def first_tokens(stream, n):
    return [tuple(next(stream)) for _ in range(n)]


def test_epochs_shuffle_deterministically_and_cover_every_sentence(tmp_path):
    pattern, _ = write_shards(tmp_path)
    a = first_tokens(SentenceStream(pattern, seed=3, reverse=False), 42)
    b = first_tokens(SentenceStream(pattern, seed=3, reverse=False), 42)
    c = first_tokens(SentenceStream(pattern, seed=4, reverse=False), 42)
    assert a == b and a != c
    assert len(set(a[:21])) == 21 and set(a[:21]) == set(a[21:])  # each epoch: every sentence once
    assert a[:21] != a[21:]  # a new order each epoch


def test_process_slices_partition_the_data(tmp_path):
    pattern, _ = write_shards(tmp_path, n_shards=4)
    seen = []
    for p in range(2):
        s = SentenceStream(pattern, seed=0, reverse=False, process_index=p, process_count=2, loop=False)
        seen += [tuple(x) for x in s]
    assert len(seen) == 28 and len(set(seen)) == 28
    few = [
        tuple(x)
        for p in range(3)
        for x in SentenceStream(
            str(tmp_path / "s0.txt"), seed=0, reverse=False, process_index=p, process_count=3, loop=False
        )
    ]
    assert len(few) == 7 and len(set(few)) == 7


def test_shards_that_do_not_divide_evenly_are_balanced_over_processes(tmp_path):
    """3 equal shards over 2 processes: one whole shard each and half of the third, not 2 and 1."""
    pattern, _ = write_shards(tmp_path, n_shards=3, per_shard=8)
    assert process_shards(["a", "b", "c"], 1, 2) == [("b", False), ("c", True)]
    per_process = []
    for p in range(2):
        s = SentenceStream(pattern, seed=0, reverse=False, process_index=p, process_count=2, loop=False)
        per_process.append([tuple(x) for x in s])
    assert [len(x) for x in per_process] == [12, 12]  # an epoch each: the same amount of data
    seen = per_process[0] + per_process[1]
    assert len(seen) == len(set(seen)) == 24  # every sentence once over the two
    # looping, both processes start their second epoch after the same number of sentences
    for p in range(2):
        s = SentenceStream(pattern, seed=1, reverse=False, process_index=p, process_count=2)
        first = [tuple(next(s)) for _ in range(12)]
        assert s.epoch == 0 and sorted(first) == sorted(per_process[p])
        next(s)
        assert s.epoch == 1


def test_max_targets_reads_the_first_sentences_in_order(tmp_path):
    pattern, vocab = write_shards(tmp_path, n_shards=2, per_shard=7)  # targets 2, 3, 4, 5, 2, 3, 4 ...
    s = SentenceStream(pattern, seed=0, reverse=False, shuffle=False, loop=False, max_targets=10)
    assert [len(x) - 1 for x in s] == [2, 3, 4]  # a fourth (5) would pass 10
    both = BidirectionalStream(pattern, vocab, 2, 3, None, seed=0, loop=False, shuffle=False, max_targets=10)
    counts = np.sum([[w.mask.sum() for w in pair] for pair in both], axis=0)
    assert counts.tolist() == [9, 9]


@pytest.mark.parametrize("advance", [1, 5, 13])
def test_resume_gives_identical_windows(tmp_path, advance):
    pattern, vocab = write_shards(tmp_path)
    make = lambda: BidirectionalStream(pattern, vocab, 3, 4, Batcher(), seed=7)  # noqa: E731
    straight = make()
    for _ in range(advance):
        next(straight)
    state = json.loads(json.dumps(straight.state_dict()))
    expected = [next(straight) for _ in range(12)]  # crosses shard and epoch boundaries
    resumed = make()
    resumed.load_state_dict(state)
    for (f1, b1), (f2, b2) in zip(expected, [next(resumed) for _ in range(12)], strict=True):
        for x, y in ((f1, f2), (b1, b2)):
            np.testing.assert_array_equal(x.token_ids, y.token_ids)
            np.testing.assert_array_equal(x.targets, y.targets)
            np.testing.assert_array_equal(x.char_ids, y.char_ids)


def test_eval_mode_counts_every_target_once(tmp_path):
    pattern, vocab = write_shards(tmp_path)
    stream = BidirectionalStream(pattern, vocab, 4, 5, None, seed=0, loop=False, shuffle=False)
    fw = bw = 0
    for f, b in stream:
        fw += int(f.mask.sum())
        bw += int(b.mask.sum())
    n_sentences, n_tokens = 21, count_tokens(pattern)
    assert fw == bw == n_tokens + n_sentences  # n tokens + </S> per sentence


def test_no_files_is_a_clear_error(tmp_path):
    with pytest.raises(ElmoError, match="nothing.*: no files match"):
        SentenceStream(str(tmp_path / "nothing*.txt"), seed=0, reverse=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ElmoError, match="all matching files are empty"):
        SentenceStream(str(tmp_path / "empty.txt"), seed=0, reverse=False)
