"""Make a local model folder for GPU runs where no hub is reachable: a byte-level BPE tokenizer trained on this
repository's Python sources (with Qwen2.5-Coder's FIM and end-of-text tokens, so the FIM path runs) and a
Qwen2 model of Qwen2.5-Coder-1.5B's shape with random weights (bf16). Energy and speed depend on the shape, not
on the weights; the suggestions are gibberish by construction.

    python bench/gpu_make_model.py /tmp/qwen-shape [--layers 28]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    sources = sorted(root.glob("server/**/*.py")) + sorted(root.glob("tests/**/*.py"))
    corpus = [p.read_text(encoding="utf-8") for p in sources]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    args.out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(args.out)
    vocab = ((len(fast) + 127) // 128) * 128
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=1536, intermediate_size=8960, num_hidden_layers=args.layers,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model: Any = Qwen2ForCausalLM(config)  # transformers types PreTrainedModel.to oddly
        model.to(dtype=torch.bfloat16)
    model.save_pretrained(args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, vocab {vocab}")


if __name__ == "__main__":
    main()
