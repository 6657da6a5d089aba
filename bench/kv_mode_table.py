#!/usr/bin/env python3
"""KV cache bytes per token in every mode, measured from the running server on the default
model: for each mode, start svdq-server with a 1 GiB cache budget, read GetServerInfo, run
one request and take the bytes its pages held from the final usage. Prints a Markdown table
and writes JSON.

  .venv/bin/python bench/kv_mode_table.py [--device cpu] [--dtype bfloat16] [--json out.json]

"8k seqs in 1 GiB" is the pool's blocks over the blocks of one 8192-token sequence; the
budget first pays for max-running (16) sequences' tail pages and per-sequence bases."""
import argparse
import datetime
import json
import math
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

MODES = [  # key mode, value mode, extra flags
    ("bf16", "bf16", []),
    ("fp8", "bf16", []),
    ("int4", "bf16", []),
    ("int2", "bf16", []),
    ("svdq", "bf16", ["--svdq-schedule", "8,4,2,1,1,0,0,0"]),
    ("svdq", "bf16", ["--svdq-schedule", "4,2,2,1,1,0,0,0"]),
    ("svdq", "bf16", ["--svdq-schedule", "8,2,0,0,0,0,0,0"]),
    ("bf16", "fp8", []),
    ("bf16", "int8", []),
    ("bf16", "int4", []),
    ("svdq", "int4", ["--svdq-schedule", "4,2,2,1,1,0,0,0"]),
    ("int2", "int4", []),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "kv_modes.json"))
    a = ap.parse_args()
    import conftest
    from conftest import Server
    import grpc
    pb, pb_grpc = conftest.generate_stubs()
    rows = []
    for key, value, extra in MODES:
        s = Server(conftest.MODEL, a.device, extra=["--key-mode", key, "--value-mode", value, "--kv-cache-bytes", "1G",
                                                    "--dtype", a.dtype, *extra])
        try:
            s.wait_ready()
            with grpc.insecure_channel(s.addr) as ch:
                stub = pb_grpc.GenerationStub(ch)
                info = stub.GetServerInfo(pb.GetServerInfoRequest())
                final = None
                for r in stub.Generate(pb.GenerateRequest(text="The KV cache of a transformer holds", max_tokens=40,
                                                          ignore_eos=True), timeout=300):
                    if r.HasField("final"):
                        final = r.final
            tokens = final.usage.prompt_tokens + final.usage.completion_tokens - 1
            blocks = math.ceil(tokens / info.kv_block_size)
            row = dict(key_mode=info.key_mode, value_mode=info.value_mode,
                       key_bytes_per_token=info.key_bytes_per_token, value_bytes_per_token=info.value_bytes_per_token,
                       key_compression=info.key_compression_ratio,
                       request_bytes_per_token=final.usage.kv_bytes_stored / (blocks * info.kv_block_size),
                       kv_compression=final.usage.kv_bytes_full_precision / final.usage.kv_bytes_stored,
                       bytes_per_running_sequence=info.kv_bytes_per_running_sequence,
                       blocks=info.kv_blocks_total, seqs_8k=info.kv_blocks_total // math.ceil(8192 / info.kv_block_size),
                       prefix_caching=info.prefix_caching)
            rows.append(row)
            print(row, file=sys.stderr)
        finally:
            s.stop()
    meta = dict(date=datetime.date.today().isoformat(), host=platform.node(), device=a.device, dtype=a.dtype,
                model=str(conftest.MODEL.name), budget_bytes=2 ** 30, command=" ".join(sys.argv))
    Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"| keys | values | key B/token | value B/token | key compression | K+V compression | "
          f"per running seq | 8k seqs in 1 GiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['key_mode']} | {r['value_mode']} | {r['key_bytes_per_token']:.0f} | {r['value_bytes_per_token']:.0f} | "
              f"{r['key_compression']:.2f}x | {r['kv_compression']:.2f}x | {r['bytes_per_running_sequence'] / 2**20:.2f} MiB | "
              f"{r['seqs_8k']} |")


if __name__ == "__main__":
    main()
