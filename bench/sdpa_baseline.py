#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention on the shapes of bench/decode_attention_bench.cc.

Llama-3-8B attention (8 KV heads, G = 4 query heads per KV head, D = 128, bf16), one query
token per sequence, contiguous K/V of batch 32 x 32K and batch 8 x 128K tokens, with the
flash and cuDNN backends and enable_gqa=True. Timed with CUDA events; prints the K/V bytes
read per second (TB/s) and the ratio to a device-to-device copy measured in the same process
(bytes read + written), the same figures kvtier_bench_decode_attention reports.

    python3 bench/sdpa_baseline.py [--iterations 50] [--json out.json]
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KV_HEADS = 8
GROUP = 4
HEAD_DIM = 128
SHAPES = [(32, 32768), (8, 131072)]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def timed_ms(fn, iterations):
    """Mean milliseconds of `iterations` calls, each between two CUDA events (the mean, as
    Google Benchmark's manual time reports it)."""
    fn()  # warm-up (kernel selection, cuDNN plan)
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return sum(times) / len(times)


def hbm_copy_tbps(iterations):
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src), iterations)
    return 2 * src.numel() / (ms * 1e-3) * 1e-12


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    copy = hbm_copy_tbps(args.iterations)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"HBM copy {copy:.3f} TB/s (read + written)")
    rows = []
    print(f"{'backend':8} {'batch':>5} {'context':>7} {'us':>9} {'TB/s':>6} {'vs_hbm_copy':>11}")
    for batch, context in SHAPES:
        q = torch.randn(batch, KV_HEADS * GROUP, 1, HEAD_DIM, device="cuda",
                        dtype=torch.bfloat16) + 0.3
        k = torch.randn(batch, KV_HEADS, context, HEAD_DIM, device="cuda",
                        dtype=torch.bfloat16) + 0.2
        v = torch.randn_like(k)
        kv_bytes = 2 * k.numel() * k.element_size()
        for name, backend in BACKENDS.items():
            row = {"backend": name, "batch": batch, "context": context}
            try:
                with sdpa_kernel(backend):
                    ms = timed_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                                  args.iterations)
                tbps = kv_bytes / (ms * 1e-3) * 1e-12
                row.update(us=ms * 1e3, tbps=tbps, vs_hbm_copy=tbps / copy)
                print(f"{name:8} {batch:5} {context:7} {ms * 1e3:9.1f} {tbps:6.3f} "
                      f"{tbps / copy:11.3f}")
            except RuntimeError as error:  # backend not available for this shape / build
                row["error"] = str(error).splitlines()[0]
                print(f"{name:8} {batch:5} {context:7} unavailable: {row['error']}")
            rows.append(row)
        del q, k, v
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hbm_copy_tbps": copy, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
