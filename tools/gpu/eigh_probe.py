"""What an SVDq prefill basis costs: eigh of the Gram matrices (kv_heads x 128 x 128) on the
GPU and on the CPU, per layer (8 matrices) and for a whole model at once (32 layers x 8)."""
import time

import torch


def timed(f, reps=5):
    f()
    torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


for dtype in (torch.float64, torch.float32):
    for batch in (8, 256):
        for dev in ("cuda", "cpu"):
            g = torch.randn(batch, 128, 128, dtype=dtype, device=dev)
            g = g @ g.transpose(1, 2)
            ms = timed(lambda: torch.linalg.eigh(g))
            print(f"eigh {batch} x 128x128 {str(dtype)[6:]} on {dev}: {ms:.2f} ms")
