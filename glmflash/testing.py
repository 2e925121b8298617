"""build_tiny_model(): a GLM-4.6V-architecture model with random weights, built offline in seconds.

It has the real special tokens, the real image patch/merge settings and a chat template in the
real prompt format (with the enable_thinking switch), and loads through the same
AutoProcessor / AutoModelForImageTextToText path as the checkpoint. Its answers are meaningless.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_VERSION = 1  # bump when the recipe changes, so cached copies are rebuilt
MARKER_FILE = "glmflash_tiny.json"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<think>",
    "</think>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]

# The real checkpoint's prompt format (see the reference notes): no closing tags, images as
# begin/image/end blocks, "/nothink" and an empty think block when thinking is off.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- set no_think = enable_thinking is defined and not enable_thinking -%}"
    "[gMASK]<sop>"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>\\n' + render(message['content']) }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|user|>\\n' + render(message['content']) + ('/nothink' if no_think else '') }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n<think></think>\\n' + render(message['content']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' + ('\\n<think></think>' if no_think else '') }}"
    "{%- endif -%}"
)

_CORPUS = [
    "The total amount on this invoice is 1,280.00 CNY, issued on 2026-03-14 by Acme Trading Co.",
    "This product photo shows a bottle labelled 'cures all diseases', which is a false claim.",
    "The bar chart compares quarterly revenue: Q1 120, Q2 135, Q3 150 and Q4 170 thousand.",
    "A cat is sitting on a red sofa next to a window. The weather outside looks sunny.",
    "Describe the image. What is written on the sign? How many people are in the picture?",
    "发票上的金额是多少？ 这张图片里有什么？ 商品图片是否包含违规内容？ 总金额为一千二百八十元。",
    "图表显示了每个季度的收入增长。 请用中文回答。 卖方名称 购买方 税额 日期 发票号码",
    "Let me think step by step about the question before answering it carefully.",
    "0123456789 .,;:!?()[]{}<>-_/\\'\"@#$%^&*+=~` \n\t",
]


def build_tiny_model(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write the tiny model (weights, tokenizer, processor, template) to `path` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vImageProcessor,
        Glm4vProcessor,
        Glm4vVideoProcessor,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=640,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    stop_ids = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]

    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Glm4vVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )

    head_dim = 32
    config = Glm4vConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 4 * head_dim,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "attention_bias": True,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000,
                "mrope_section": [2, 3, 3],  # head_dim 32 * partial 0.5 / 2 = 8 frequencies
                "partial_rotary_factor": 0.5,
            },
            "eos_token_id": stop_ids,
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 64,
            "num_heads": 4,
            "intermediate_size": 128,
            "out_hidden_size": 4 * head_dim,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "image_size": 336,
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=stop_ids,
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=0.8,
        top_p=0.6,
        top_k=2,
        repetition_penalty=1.1,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / MARKER_FILE).write_text(json.dumps({"version": TINY_VERSION, "seed": seed}))
    return path


def is_tiny_model(path: str | os.PathLike) -> bool:
    """True when `path` holds a model written by build_tiny_model()."""
    return (Path(path) / MARKER_FILE).is_file()


def ensure_tiny_model(cache_dir: str | os.PathLike) -> Path:
    """The tiny model in `cache_dir`, built on first use (atomically, so parallel users agree)."""
    target = Path(cache_dir) / f"tiny-v{TINY_VERSION}"
    if is_tiny_model(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny_model(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            if not is_tiny_model(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
