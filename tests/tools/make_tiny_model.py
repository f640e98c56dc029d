"""Run inside .venv-vllm: make a tiny Llama model and tokenizer, offline, into DIR.

A byte-level BPE tokenizer trained on a few lines and a LlamaConfig with random weights (fixed
seed). head_dim must be >= 64 for vLLM's CPU attention: hidden 128 with 2 heads.
"""

import sys
from pathlib import Path

out = Path(sys.argv[1])
if (out / "config.json").exists() and (out / "tokenizer.json").exists():
    sys.exit(0)
out.mkdir(parents=True, exist_ok=True)

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

text = ["the quick brown fox jumps over the lazy dog",
        "spot prices fall and every token is counted before the invoice arrives",
        "hello there how are you today", "a b c d e f g h i j k l m n o p"] * 20
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.train_from_iterator(text, trainers.BpeTrainer(
    vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                               unk_token="<unk>")
fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "assistant:")
fast.save_pretrained(out)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
print(f"tiny model in {out}")
