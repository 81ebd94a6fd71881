"""`lumina upcycle --load DENSE_CKPT | --hf LLAMA_DIR --mode moe|mod|hybrid --out CKPT`: sparse
upcycling of a dense model (every expert a copy of its FFN, routers fresh)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--load", metavar="DENSE_CKPT", help="dense Lumina checkpoint directory")
    source.add_argument("--hf", metavar="LLAMA_DIR", help="Hugging Face Llama directory (safetensors)")
    parser.add_argument("--mode", required=True, help="moe, mod or hybrid")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint directory to write (new or empty)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the fresh routers' init (as lumina train's)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="with --hf: sentencepiece .model to train with (default: LLAMA_DIR/tokenizer.model)")
    parser.add_argument("--seq-length", type=int, default=None,
                        help="with --hf: training sequence length (default: the preset's)")


def run(args: argparse.Namespace) -> int:
    from lumina.hf import import_hf
    from lumina.hf.files import check_output
    from lumina.hf.upcycle import MODES, read_dense, upcycle

    if args.mode not in MODES:
        raise ValueError(f"--mode={args.mode!r} is invalid: upcycling makes one of {', '.join(MODES)}")
    check_output("--out", args.out)
    dense, flag, source = read_dense(args.load, args.hf, args.tokenizer_model, args.seq_length)
    cfg, state = upcycle(dense.state, dense.cfg, args.mode, args.seed, flag)
    model = import_hf.ModelWeights(cfg, state, dense.tokenizer_sha256, dense.tokenizer_path)
    import_hf.write(args.out, model, {**source, "upcycled_to": cfg.mode, "seed": args.seed})
    print(f"upcycled {dense.cfg.name}/dense into {cfg.name}/{cfg.mode} at {args.out}")
    print("continue with: " + import_hf.train_command(args.out, model))
    return 0
