"""The real checkpoints of deploy/fetch-eval-models.sh (not downloaded by `make test`: these
tests skip when the file is absent): our GGUF loader against transformers loading the same
GGUF (dequantized to fp32 on the CPU), last-position logits of a few prompts."""
import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import BUILD, ROOT

QWEN_05B = ROOT / ".models" / "Qwen2.5-Coder-0.5B-Instruct.gguf"


@pytest.mark.skipif(not QWEN_05B.exists(), reason="run deploy/fetch-eval-models.sh 0.5b first")
def test_qwen25_coder_05b_logits_match_transformers(tmp_path):
    from transformers import AutoModelForCausalLM
    prompts = [[750, 75698, 1445, 982, 262], list(range(1000, 1064)), [151644, 872, 198, 9707, 151645, 198]]
    out = tmp_path / "logits.f32"
    r = subprocess.run([str(BUILD / "tools" / "svdq-probe"), "logits", str(QWEN_05B), str(out)],
                       input=json.dumps(prompts), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    vocab = json.loads(r.stdout)[0]
    ours = np.fromfile(out, dtype=np.float32).reshape(len(prompts), vocab)
    m = AutoModelForCausalLM.from_pretrained(str(QWEN_05B.parent), gguf_file=QWEN_05B.name, dtype=torch.float32)
    m.eval()
    with torch.no_grad():
        ref = np.stack([m(torch.tensor([p])).logits[0, -1].float().numpy() for p in prompts])
    assert ref.shape[1] >= vocab
    ref = ref[:, :vocab]
    for i in range(len(prompts)):
        err = np.abs(ours[i] - ref[i]).max()
        assert err <= 1e-3 * max(1.0, np.abs(ref[i]).max()), f"prompt {i}: max error {err}"
        assert ours[i].argmax() == ref[i].argmax()
