import numpy as np
import pytest

from pipeline.balance.static import build_sampler
from pipeline.config import SamplingConfig
from pipeline.data.batches import BatchStream, collate, pack
from pipeline.data.store import TokenSplit, ragged
from pipeline.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def fake_split(n: int, seed: int, max_len: int = 20) -> TokenSplit:
    rng = np.random.default_rng(seed)
    src = [list(rng.integers(10, 100, size=rng.integers(1, max_len))) for _ in range(n)]
    tgt = [list(rng.integers(10, 100, size=rng.integers(1, max_len))) for _ in range(n)]
    s, so = ragged(src)
    t, to = ragged(tgt)
    return TokenSplit(s, so, t, to, np.arange(1, n + 1))


SPLITS = [fake_split(500, 1), fake_split(120, 2), fake_split(9, 3)]
NAMES = ["a", "b", "c"]


def stream(world=1, rank=0, accum=1, chunk_steps=4, seed=5, temperature=3.0, max_tokens=300) -> BatchStream:
    sampler = build_sampler(SamplingConfig("temperature", {"temperature": temperature}), NAMES,
                            [len(s) for s in SPLITS])
    return BatchStream(SPLITS, [0, 1, 2], [7, 8, 9], sampler, seed=seed, stage=0, max_tokens=max_tokens,
                       chunk_steps=chunk_steps, world=world, rank=rank, accum=accum)


def rows(sb):
    return [(b.src.tolist(), b.tgt_in.tolist(), b.direction.tolist()) for b in sb.micro]


def test_collate_layout():
    b = collate([(0, 0), (2, 3)], SPLITS, [7, 8, 9], [0, 1, 2])
    s0, t0 = SPLITS[0].src_ids(0), SPLITS[0].tgt_ids(0)
    assert b.src[0, 0] == 7 and b.src[0, 1 : len(s0) + 1].tolist() == list(s0) and b.src[0, len(s0) + 1] == EOS_ID
    assert b.src[1, 0] == 9
    assert b.tgt_in[0, 0] == BOS_ID and b.tgt_in[0, 1 : len(t0) + 1].tolist() == list(t0)
    assert b.tgt_out[0, : len(t0)].tolist() == list(t0) and b.tgt_out[0, len(t0)] == EOS_ID
    assert (b.tgt_out[0, len(t0) + 1 :] == PAD_ID).all()
    assert b.direction.tolist() == [0, 2]
    assert b.tgt_tokens == len(t0) + 1 + len(SPLITS[2].tgt_ids(3)) + 1


def test_pack_respects_the_budget():
    sizes = np.array([3, 5, 5, 7, 9, 20, 30])
    batches = pack(sizes, np.argsort(sizes), 30)
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    for b in batches:
        assert len(b) * sizes[b].max() <= 30 or len(b) == 1


def test_same_seed_same_batches_and_budget_holds():
    a, b = stream(), stream()
    for step in range(10):
        sa, sb = a.step_batches(step), b.step_batches(step)
        assert rows(sa) == rows(sb)
        for mb in sa.micro:
            assert mb.src.numel() <= 300 and mb.tgt_in.numel() <= 300
    other = stream(seed=6)
    assert rows(other.step_batches(0)) != rows(stream().step_batches(0))


def test_state_round_trip_mid_chunk_reproduces_the_rest():
    a = stream()
    for step in range(6):  # chunk 1, mid-way
        a.step_batches(step)
    state = a.state_dict()
    expected = [rows(a.step_batches(s)) for s in range(6, 20)]
    b = stream()
    b.load_state_dict(state)
    assert [rows(b.step_batches(s)) for s in range(6, 20)] == expected


def test_ranks_partition_the_global_batch_and_agree_on_the_normaliser():
    solo = stream(world=1, accum=4, chunk_steps=2)
    ranks = [stream(world=2, rank=r, accum=2, chunk_steps=2) for r in range(2)]
    for step in range(5):
        whole = solo.step_batches(step)
        parts = [r.step_batches(step) for r in ranks]
        assert parts[0].global_tgt_tokens == parts[1].global_tgt_tokens == whole.global_tgt_tokens
        assert whole.global_tgt_tokens == sum(b.tgt_tokens for b in whole.micro)
        got = sorted(map(str, [rows_ for p in parts for rows_ in rows(p)]))
        assert got == sorted(map(str, rows(whole)))


def test_directions_follow_p_and_every_example_is_seen_each_epoch():
    s = stream(temperature=1.0, chunk_steps=8, max_tokens=400)
    counts = np.zeros(3)
    seen = [set() for _ in range(3)]
    for step in range(120):
        for mb in s.step_batches(step).micro:
            counts += np.bincount(mb.direction.numpy(), minlength=3)
    p = np.array([len(x) for x in SPLITS]) / sum(len(x) for x in SPLITS)
    freq = counts / counts.sum()
    assert np.abs(freq - p).max() < 0.03, (freq, p)
    # cursors walk permutations: the first len(split) draws of a direction are all distinct
    s2 = stream(temperature=1.0)
    ex = s2._examples(np.zeros(500, dtype=int), np.zeros(3, dtype=np.int64))
    seen[0].update(ex.tolist())
    assert len(seen[0]) == 500


def test_an_example_larger_than_the_budget_is_refused():
    with pytest.raises(ValueError, match="max_tokens 10 is smaller than an example"):
        stream(max_tokens=10)


class _ScriptedPolicy:
    """A dynamic policy whose p changes after every `every` steps (at stage steps 50, 100, ...)."""

    def __new__(cls, every):
        s = build_sampler(SamplingConfig("uniform"), NAMES, [len(x) for x in SPLITS])
        s.every, s.dynamic = every, True
        s.probabilities = lambda step: np.roll([0.8, 0.15, 0.05], step // every)
        return s


@pytest.mark.parametrize("every,chunk_steps", [(50, 32), (7, 4), (4, 8), (12, 4)])
def test_a_new_distribution_drives_exactly_the_steps_after_its_update(every, chunk_steps):
    """Issue 14.7: with every 50 and chunks of 32 a new p took effect up to 31 steps late and the
    periods alternated 32/64 steps. Chunks now start at every multiple of `every`."""
    sampler = _ScriptedPolicy(every)
    s = BatchStream(SPLITS, [0, 1, 2], [7, 8, 9], sampler, seed=5, stage=0, max_tokens=300,
                    chunk_steps=chunk_steps, period=every)
    starts = []
    for step in range(3 * every + 5):
        sb = s.step_batches(step)
        assert len(sb.micro) == 1
        np.testing.assert_array_equal(s.p, np.roll([0.8, 0.15, 0.05], step // every))
        starts.append(s.span(s.chunk)[0])
    # every chunk starts at a multiple of chunk_steps within its period
    assert all((a % every) % chunk_steps == 0 for a in starts)
    # a resumed stream rebuilds the same chunk mid-way
    t = BatchStream(SPLITS, [0, 1, 2], [7, 8, 9], _ScriptedPolicy(every), seed=5, stage=0, max_tokens=300,
                    chunk_steps=chunk_steps, period=every)
    t.load_state_dict(s.state_dict())
    step = 3 * every + 5
    assert rows(t.step_batches(step)) == rows(s.step_batches(step))
