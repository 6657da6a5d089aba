"""bench/sparse_selection_study.py's sub-chunk landmark scores on planted keys (no model)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import sparse_selection_study as st  # noqa: E402


def planted(d=64, c=64, n=40, needle_chunk=17):
    """Keys with a large common part (channel 0, as the keys' mean holds most of their energy) and
    noise; one token of one chunk carries a needle in channel 5, which the query asks for."""
    g = torch.Generator().manual_seed(0)
    k = torch.randn(n * c, d, generator=g) * 0.5
    k[:, 0] += 20.0
    k[needle_chunk * c + 3, 5] += 96.0
    q = torch.zeros(2, 1, d)  # two query heads of the KV head, one row
    q[:, :, 5] = 1.0
    q[:, :, 0] = 0.2
    return q, k, n, c


def rank_of(scores, chunk):
    """0 for the best-scored chunk."""
    return int((scores > scores[chunk]).sum())


def test_one_direction_fitted_to_the_raw_keys_is_the_common_part_and_misses_the_needle():
    q, k, n, c = planted()
    scores = st.Selector("subk1", c, 256, 64).scores(q, k, None, n)
    assert scores.shape == (1, n)
    # That direction is the common part: every chunk scores about the same (within 5%), so noise
    # ranks them, and the needle's chunk is not first.
    s = scores[0]
    assert float(s.max() - s.min()) < 0.05 * float(s.abs().mean())
    assert rank_of(s, 17) > 0


def test_centred_fits_find_the_needle_with_one_direction_and_every_fit_with_two():
    q, k, n, c = planted()
    for method in ("subc1", "subs1", "subc2", "subs2", "subk2"):
        scores = st.Selector(method, c, 256, 64).scores(q, k, None, n)
        assert rank_of(scores[0], 17) == 0, method


def test_centred_fits_cost_the_same_bytes_as_the_raw_one():
    for r in (1, 2, 8):
        want = st.Selector(f"subk{r}", 64, 256, 64).metadata_bytes_per_token(128)
        assert want == (64 // 16 * r + 2) / 64
        for m in ("subc", "subs"):
            assert st.Selector(f"{m}{r}", 64, 256, 64).metadata_bytes_per_token(128) == want
