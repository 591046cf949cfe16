"""Load a Llama / Gemma / any attention-interface model with conv-basis attention and compare it with SDPA.

    python examples/conv_basis_speed.py --model meta-llama/Llama-3.2-1B --seq_len 16384
    python examples/conv_basis_speed.py --model google/gemma-2-2b --num_bases 8 --local_window 256

Times one prefill forward pass under each implementation on the same tokens and prints the
perplexity of both, so you see what the approximation costs on your model. Run
`hf-ext conv-basis-report --model ...` first to see which heads a conv basis fits.
"""

import argparse
import math
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_ext  # noqa: F401  (registers attn_implementation="conv_basis")


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", required=True, help="Hub id or folder of a causal LM")
parser.add_argument("--text", default=None, help="a text file to score; random tokens by default")
parser.add_argument("--seq_len", type=int, default=8192)
parser.add_argument("--num_bases", type=int, default=8, help="k; 0 for exact (as many bases as needed)")
parser.add_argument("--local_window", type=int, default=256, help="recent keys attended exactly; 0: none")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model)
if args.text:
    ids = tokenizer(open(args.text, encoding="utf-8").read(), return_tensors="pt").input_ids[:, : args.seq_len]
else:
    ids = torch.randint(0, tokenizer.vocab_size, (1, args.seq_len), generator=torch.Generator().manual_seed(0))

settings = {"num_bases": args.num_bases or None, "local_window": args.local_window, "min_seq_len": 0}
for implementation in ("sdpa", "conv_basis"):
    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=implementation, dtype=torch.float32)
    model.config.conv_basis = settings  # read by conv_basis at every forward; saved by save_pretrained
    with torch.inference_mode():
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        seconds = time.perf_counter() - start
    print(f"{implementation:>10}: prefill of {ids.shape[1]} tokens in {seconds:.2f} s, perplexity {math.exp(loss):.3f}")
