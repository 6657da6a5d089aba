"""Tiny random Hugging Face checkpoints, one per supported architecture, made with
`transformers` (config with the family's features, save_pretrained to a folder). Norm weights
and biases are randomized too, so that a runtime ignoring them would show."""
import torch

VOCAB = 320
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, initializer_range=0.1)

# name -> (config class, extra config, save_pretrained kwargs)
KINDS = {
    # Llama 3.1 / 3.2: llama3 RoPE scaling (original context 64 so that it bites at short lengths).
    "llama3": ("LlamaConfig", dict(rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), {}),
    # Llama 2: plain RoPE, separate output matrix; saved in shards with an index.
    "llama2": ("LlamaConfig", dict(rope_theta=10000.0), {"max_shard_size": "100KB"}),
    # SmolLM2: tied embeddings.
    "smollm2": ("LlamaConfig", dict(rope_theta=100000.0, tie_word_embeddings=True), {}),
    "mistral": ("MistralConfig", dict(rope_theta=1000000.0, sliding_window=None), {}),
    # Qwen2 / 2.5: q/k/v biases.
    "qwen2": ("Qwen2Config", dict(rope_theta=1000000.0, tie_word_embeddings=False), {}),
}
MODEL_CLASS = {"LlamaConfig": "LlamaForCausalLM", "MistralConfig": "MistralForCausalLM",
               "Qwen2Config": "Qwen2ForCausalLM"}


def make_checkpoint(kind, folder, dtype=torch.float32):
    import transformers
    cfg_name, extra, save_kwargs = KINDS[kind]
    cfg = getattr(transformers, cfg_name)(**COMMON, **extra)
    torch.manual_seed(sum(map(ord, kind)))
    model = getattr(transformers, MODEL_CLASS[cfg_name])(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True, **save_kwargs)
    return model
