"""`lumina import --hf DIR --out CKPT`: a Hugging Face Llama or Mixtral model as a Lumina
checkpoint to continue pre-training from."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf", required=True, metavar="DIR", help="Hugging Face model directory (safetensors)")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint directory to write (new or empty)")
    parser.add_argument("--tokenizer-model", default=None,
                        help="sentencepiece .model to train with (default: DIR/tokenizer.model)")
    parser.add_argument("--seq-length", type=int, default=None, help="training sequence length (default: the preset's)")
    parser.add_argument("--moe-dropless", action="store_true",
                        help="train an imported Mixtral dropless, as Hugging Face runs it "
                             "(default: the preset's capacity)")


def run(args: argparse.Namespace) -> int:
    from lumina.hf import import_hf
    from lumina.hf.files import check_output

    check_output("--out", args.out)  # before reading the weights
    model = import_hf.read(args.hf, args.tokenizer_model, args.seq_length, args.moe_dropless)
    import_hf.write(args.out, model, {"hf": args.hf})
    print(f"imported {args.hf} as {model.cfg.name}/{model.cfg.mode} ({model.cfg.num_layers} layers) into {args.out}")
    print("continue with: " + import_hf.train_command(args.out, model))
    return 0
