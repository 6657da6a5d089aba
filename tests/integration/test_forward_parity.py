"""Last-position logits of our Llama forward (fp32, CPU) against transformers loading the
same .gguf (fp32, CPU). Bound: max |diff| <= 2e-3 over the vocabulary (the logits are
O(10); fp32 summation order differs between the two) and the same top-1 token."""
import numpy as np
import pytest
import torch

PROMPTS = [
    [504, 3575, 282, 4649, 314],                                   # "The capital of France is"
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2, 198],      # chat-like prefix with specials
    list(range(100, 164)),                                          # 64 arbitrary ids
    [42],                                                           # a single token
]


def test_logits_match_transformers(probe, hf_model, tmp_path):
    out = tmp_path / "logits.f32"
    vocab = probe("logits", out, stdin=PROMPTS)[0]
    ours = np.fromfile(out, dtype=np.float32).reshape(len(PROMPTS), vocab)
    for i, ids in enumerate(PROMPTS):
        with torch.no_grad():
            ref = hf_model(torch.tensor([ids])).logits[0, -1].numpy()
        diff = np.abs(ours[i] - ref).max()
        assert diff <= 2e-3, f"prompt {i}: max |logit diff| {diff}"
        assert int(ours[i].argmax()) == int(ref.argmax()), f"prompt {i}: top-1 differs"
