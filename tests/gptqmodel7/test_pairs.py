"""Pairs of one calibration batch (fair_gptq_v7.pairs) against sums written out sentence by sentence."""
import pytest
import torch

from fair_gptq_v7.pairs import pair_differences, pair_sums_and_differences

HIDDEN = 6


def pair_differences_gram(inp, mask):
    """What the task adds to its pair sum: D^T D of the stacked differences."""
    deltas, pairs = pair_differences(inp, mask)
    return deltas.t().matmul(deltas), pairs


def padded_batch(lengths, pad_left, seed=0):
    """A [B, T, H] batch whose sentence i has lengths[i] real rows; pads hold large junk values."""
    g = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    batch = 100 + torch.randn(len(lengths), seq, HIDDEN, generator=g)  # junk: must never be used
    mask = torch.zeros(len(lengths), seq, dtype=torch.bool)
    sentences = []
    for i, n in enumerate(lengths):
        real = torch.randn(n, HIDDEN, generator=g)
        sentences.append(real)
        rows = slice(seq - n, seq) if pad_left else slice(0, n)
        batch[i, rows] = real
        mask[i, rows] = True
    return batch, mask, sentences


def expected_gram(sentences):
    total = torch.zeros(HIDDEN, HIDDEN, dtype=torch.float64)
    for s, a in zip(sentences[0::2], sentences[1::2]):
        for t in range(min(len(s), len(a))):  # common length, first tokens aligned
            d = (s[t] - a[t]).double()
            total += torch.outer(d, d)
    return total


@pytest.mark.parametrize("pad_left", [False, True])
@pytest.mark.parametrize("lengths", [[5, 3], [4, 4], [2, 7, 6, 6], [3, 5, 1, 4]])
def test_padded_and_flattened_batches(lengths, pad_left):
    batch, mask, sentences = padded_batch(lengths, pad_left)
    for inp in (batch, batch.reshape(-1, HIDDEN)):  # 3-D, and flattened as OPT's fc1/fc2 receive it
        gram, pairs = pair_differences_gram(inp, mask)
        assert pairs == len(lengths) // 2
        torch.testing.assert_close(gram.double(), expected_gram(sentences), rtol=1e-5, atol=1e-4)


def test_unpadded_batch_without_mask():
    batch, _, sentences = padded_batch([4, 4, 4, 4], pad_left=False)
    gram, pairs = pair_differences_gram(batch, None)
    assert pairs == 2
    torch.testing.assert_close(gram.double(), expected_gram(sentences), rtol=1e-5, atol=1e-4)


def test_rows_are_paired_2i_with_2i_plus_1_only():
    # sentences 0 and 1 equal, 2 and 3 equal: a correct pairing gives 0, pairing (1, 2) would not
    batch, mask, sentences = padded_batch([3, 3, 3, 3], pad_left=False)
    batch[1], batch[3] = batch[0], batch[2]
    gram, _ = pair_differences_gram(batch, mask)
    assert torch.count_nonzero(gram) == 0


def test_odd_batch_and_unsplittable_flat_input_are_refused():
    batch, mask, _ = padded_batch([3, 3, 3], pad_left=False)
    with pytest.raises(ValueError, match="must be even"):
        pair_differences_gram(batch, mask)
    flat, mask, _ = padded_batch([3, 3], pad_left=False)
    with pytest.raises(ValueError, match="keep-mask"):
        pair_differences_gram(flat.reshape(-1, HIDDEN), None)


def test_empty_batch_and_half_precision_inputs():
    deltas, pairs = pair_differences(torch.zeros(0, 3, HIDDEN), None)
    assert pairs == 0 and deltas.shape == (0, HIDDEN)
    batch, mask, sentences = padded_batch([5, 3, 4, 6], pad_left=True)
    low, _ = pair_differences_gram(batch.bfloat16(), mask)
    expected = expected_gram([s.bfloat16().float() for s in sentences])  # the same rounding of the inputs
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pad_left", [False, True])
@pytest.mark.parametrize("lengths", [[5, 3], [2, 7, 6, 6], [3, 5, 1, 4]])
def test_sums_and_differences_give_h_and_the_pair_sum(lengths, pad_left):
    """fair_accumulate="sum-difference": V^T V + D^T D = 2 sum x x^T over the rows stock 7.7.0 puts in H (real
    tokens of a 3-D input; every row of a flattened one, pads included) and D^T D = the pair sum."""
    batch, mask, sentences = padded_batch(lengths, pad_left)
    for inp, rows in ((batch, torch.cat(sentences)), (batch.reshape(-1, HIDDEN), batch.reshape(-1, HIDDEN))):
        V, D, pairs, counted = pair_sums_and_differences(inp, mask)
        assert pairs == len(lengths) // 2 and counted == rows.shape[0] and V.dtype == D.dtype == torch.float32
        xtx = rows.double().t() @ rows.double()
        torch.testing.assert_close((V.t() @ V + D.t() @ D).double(), 2 * xtx, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close((D.t() @ D).double(), expected_gram(sentences), rtol=1e-5, atol=1e-4)
