"""What the reserved KV cache saves on long answers: traitwatch's decoding loop with its own
cache (traitwatch.generate._kvcache: room for the answer reserved up front, written in place)
against the same loop with transformers' DynamicCache (grown by concatenation every step).

Gemma 3 270M architecture with random weights (no download), bf16 on a CPU (or --device
cuda), --rows prompts of 64 tokens, --new tokens each (EOS ignored), greedy, the bare base
model. Both ways give the same tokens (checked here; tests/test_decode.py checks the hidden
states bit for bit). Last line: `reserved vs dynamic cache (ROWS x NEW): Rx`.

Run: python bench/decode_cache.py [--rows 128] [--new 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hardware import describe, sync  # noqa: E402
from eval_throughput import build, prompts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=128, help="prompts decoded in one batch")
    ap.add_argument("--new", type=int, default=256, help="new tokens per answer (end-of-sequence ignored)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when present)")
    args = ap.parse_args(argv)
    from transformers import DynamicCache

    import traitwatch.generate._decode as dec
    from traitwatch.models import left_pad

    device = torch.device(args.device)
    base = build("gemma-270m", device, torch.bfloat16)
    tok = base.tokenizer
    ids, mask = left_pad([list(tok(t)["input_ids"]) for t in prompts(tok, args.rows, 64)], int(tok.pad_token_id), device)
    print(f"machine: {describe(device)}; {args.rows} rows x {args.new} new tokens, prompts of {ids.shape[1]} tokens")
    reserved = dec.reserved_cache
    dec.decode(base.model, ids[:4], mask[:4], max_new_tokens=4, stop_ids=[])  # warm-up
    seconds, tokens = {}, {}
    for name in ("dynamic", "reserved"):
        dec.reserved_cache = reserved if name == "reserved" else (lambda config, room: DynamicCache(config=config))  # type: ignore[assignment]
        t = time.perf_counter()
        out = dec.decode(base.model, ids, mask, max_new_tokens=args.new, stop_ids=[])
        sync(device)
        seconds[name] = time.perf_counter() - t
        tokens[name] = [o.tokens for o in out]
        print(f"{name:>9} cache: {seconds[name]:.1f} s, {1e3 * seconds[name] / args.new:.0f} ms per step")
    dec.reserved_cache = reserved
    assert tokens["dynamic"] == tokens["reserved"], "the caches gave different tokens"
    print(f"reserved vs dynamic cache ({args.rows} x {args.new}): {seconds['dynamic'] / seconds['reserved']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
