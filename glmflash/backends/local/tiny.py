"""The tiny demo model: build_tiny_model() writes a GLM-4.6V-architecture model with random
weights offline in seconds; load("tiny") and "auto" without the checkpoint run it.

It looks like the real checkpoint wherever code could depend on it: the same special tokens, with
`<think>`, `</think>`, the box markers and `/nothink` as added tokens that are *not* flagged special
(as in the real tokenizer); the real image patch/merge settings; a chat template in either of the
family's two prompt forms (TEMPLATES); and it loads through the same AutoProcessor /
AutoModelForImageTextToText path. Its token ids are small and differ from the real ones on purpose
(nothing may depend on them); `real_ids=True` lays the tokenizer out with the real ids, for a
random checkpoint of the full-size architecture. Its answers are meaningless.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_VERSION = 3  # bump when the recipe changes, so cached copies are rebuilt
MARKER_FILE = "glmflash_tiny.json"
TINY_ID = "glmflash/tiny"  # the model id of the tiny model loaded by name

# The GLM-4.5/4.6 tokenizer family's ids (reference notes; strong evidence, not read off Flash's
# own files). Added tokens are laid out in this order; ids between them are reserved fillers.
REAL_TOKEN_IDS = {
    "<|endoftext|>": 151329,
    "[MASK]": 151330,
    "[gMASK]": 151331,
    "[sMASK]": 151332,
    "<sop>": 151333,
    "<eop>": 151334,
    "<|system|>": 151335,
    "<|user|>": 151336,
    "<|assistant|>": 151337,
    "<|observation|>": 151338,
    "<|begin_of_image|>": 151339,
    "<|end_of_image|>": 151340,
    "<|begin_of_video|>": 151341,
    "<|end_of_video|>": 151342,
    "<think>": 151350,
    "</think>": 151351,
    "/nothink": 151360,
    "<|begin_of_box|>": 151361,
    "<|end_of_box|>": 151362,
    "<|image|>": 151363,
    "<|video|>": 151364,
}
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
# Added tokens the real tokenizer does not flag special: decoding with skip_special_tokens keeps them.
NOT_SPECIAL = {"<think>", "</think>", "/nothink", "<|begin_of_box|>", "<|end_of_box|>", *TOOL_TOKENS}
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")

_RENDER = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
# The family's tools block (docs/model-reference.md): after [gMASK]<sop>, a system turn listing
# each tool as one JSON line, then the call format.
_TOOLS = (
    "{%- if tools -%}"
    "{{ '<|system|>\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\\n' }}"
    "{%- for tool in tools -%}{{ tool | tojson(ensure_ascii=False) }}{{ '\\n' }}{%- endfor -%}"
    "{{ '</tools>\\n\\nFor each function call, output the function name and arguments within the "
    "following XML format:\\n<tool_call>{function-name}\\n<arg_key>{arg-key-1}</arg_key>\\n"
    "<arg_value>{arg-value-1}</arg_value>\\n<arg_key>{arg-key-2}</arg_key>\\n"
    "<arg_value>{arg-value-2}</arg_value>\\n...\\n</tool_call>' }}"
    "{%- endif -%}"
)
# The family's rules for history: a user turn gets "/nothink" when thinking is off (once); an
# earlier assistant turn is rendered with an empty think block, its own reasoning dropped, and its
# text stripped of surrounding whitespace (nothing at all after the think block when it is empty),
# then its calls; consecutive tool results share one observation turn.
_TURNS = (
    "{%- set no_think = enable_thinking is defined and not enable_thinking -%}"
    "[gMASK]<sop>" + _TOOLS + "{%- for message in messages -%}"
    "{%- set text = render(message['content']) -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>\\n' + text }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '<|user|>\\n' + text + ('/nothink' if no_think and not text.endswith('/nothink') else '') }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if '</think>' in text -%}{%- set text = text.split('</think>')[-1] -%}{%- endif -%}"
    "{{ '<|assistant|>\\n<think></think>' + ('\\n' + text.strip() if text.strip() else '') }}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{{ '\\n<tool_call>' + call['function']['name'] + '\\n' }}"
    "{%- for key, value in call['function']['arguments'].items() -%}"
    "{{ '<arg_key>' + key + '</arg_key>\\n<arg_value>' }}"
    "{{- value if value is string else value | tojson(ensure_ascii=False) }}{{ '</arg_value>\\n' }}"
    "{%- endfor -%}{{ '</tool_call>' }}"
    "{%- endfor -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}<|observation|>{%- endif -%}"
    "{{ '\\n<tool_response>\\n' + text + '\\n</tool_response>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# The checkpoint's exact generation prompt is not published: the family has two forms, and code
# must work with both. "vision" (GLM-4.5V/4.6V, GLM-OCR): "<|assistant|>\n", the model then writes
# "<think>"; "text" (GLM-4.5): "<|assistant|>", the model then writes "\n<think>".
TEMPLATES = {
    "vision": _RENDER
    + _TURNS
    + "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' + ('<think></think>\\n' if no_think else '') }}"
    "{%- endif -%}",
    "text": _RENDER
    + _TURNS
    + "{%- if add_generation_prompt -%}{{ '<|assistant|>' + ('\\n<think></think>' if no_think else '') }}"
    "{%- endif -%}",
}

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


def build_tokenizer(*, real_ids: bool = False):
    """A small byte-level BPE tokenizer with the family's added tokens, special or not as in the
    real one. `real_ids`: each added token at its real id (REAL_TOKEN_IDS), the gaps filled."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    core.train_from_iterator(_CORPUS * 4, trainer=trainer)
    order = list(REAL_TOKEN_IDS) + TOOL_TOKENS
    if real_ids:
        core = _padded(core, min(REAL_TOKEN_IDS.values()))
        ids = iter(range(min(REAL_TOKEN_IDS.values()), max(REAL_TOKEN_IDS.values()) + 1))
        by_id = {v: k for k, v in REAL_TOKEN_IDS.items()}
        order = [by_id.get(i, f"<|reserved_{i}|>") for i in ids] + TOOL_TOKENS
    for token in order:
        added = AddedToken(token, special=token not in NOT_SPECIAL, normalized=False)
        (core.add_tokens if token in NOT_SPECIAL else core.add_special_tokens)([added])
    if real_ids:
        wrong = {t: core.token_to_id(t) for t, i in REAL_TOKEN_IDS.items() if core.token_to_id(t) != i}
        assert not wrong, f"tokenizer layout: {wrong}"
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=[t for t in order if t not in NOT_SPECIAL and t != "<|endoftext|>"],
    )


def _padded(core, size: int):
    """The same BPE with unreachable filler entries up to `size` ids, so added tokens start there."""
    from tokenizers import Tokenizer, models

    model = json.loads(core.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab.update({f"<|filler_{i}|>": i for i in range(len(vocab), size)})
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    pairs: list[tuple[str, str]] = [(str(a), str(b)) for a, b in merges]
    padded = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    padded.pre_tokenizer, padded.decoder = core.pre_tokenizer, core.decoder
    return padded


def token_ids(tokenizer) -> dict[str, object]:
    """The config fields that name tokens, as this tokenizer numbers them."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (*REAL_TOKEN_IDS, *STOP_TOKENS)}
    return {
        "image_token_id": ids["<|image|>"],
        "video_token_id": ids["<|video|>"],
        "image_start_token_id": ids["<|begin_of_image|>"],
        "image_end_token_id": ids["<|end_of_image|>"],
        "video_start_token_id": ids["<|begin_of_video|>"],
        "video_end_token_id": ids["<|end_of_video|>"],
        "eos_token_id": [ids[t] for t in STOP_TOKENS],
        "pad_token_id": ids["<|endoftext|>"],
    }


def write_processor(path: str | os.PathLike, *, template: str = "vision", real_ids: bool = False):
    """Tokenizer, image/video processor and chat template into `path`; returns the processor."""
    from transformers import Glm4vImageProcessor, Glm4vProcessor, Glm4vVideoProcessor

    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {', '.join(TEMPLATES)}, not {template!r}")
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(),
        tokenizer=build_tokenizer(real_ids=real_ids),
        video_processor=Glm4vVideoProcessor(),
        chat_template=TEMPLATES[template],
    )
    processor.save_pretrained(path)
    return processor


def generation_config(ids: dict):
    """The sampling defaults seen in the wild for this family (LM Studio's preset)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        do_sample=True,
        temperature=0.8,
        top_p=0.6,
        top_k=2,
        repetition_penalty=1.1,
    )


def build_tiny_model(path: str | os.PathLike, *, seed: int = 0, template: str = "vision") -> Path:
    """Write the tiny model (weights, tokenizer, processor, template) to `path` and return it."""
    import torch
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor = write_processor(path, template=template)
    ids: dict = token_ids(processor.tokenizer)  # token names -> ids, spread into the config
    head_dim = 32
    text_ids = {k: ids[k] for k in ("eos_token_id", "pad_token_id")}
    config = Glm4vConfig(
        text_config={
            "vocab_size": len(processor.tokenizer),
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
            **text_ids,
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
        **{k: v for k, v in ids.items() if k not in text_ids},
    )
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config).eval()
    model.generation_config = generation_config(ids)
    model.save_pretrained(path)
    marker = {"version": TINY_VERSION, "seed": seed, "template": template}
    (path / MARKER_FILE).write_text(json.dumps(marker))
    return path


def is_tiny_model(path: str | os.PathLike) -> bool:
    """True when `path` holds a model written by build_tiny_model()."""
    return (Path(path) / MARKER_FILE).is_file()


def ensure_tiny_model(cache_dir: str | os.PathLike, *, template: str = "vision") -> Path:
    """The tiny model in `cache_dir`, built on first use (atomically, so parallel users agree)."""
    suffix = "" if template == "vision" else f"-{template}"
    target = Path(cache_dir) / f"tiny-v{TINY_VERSION}{suffix}"
    if is_tiny_model(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        build_tiny_model(staging, template=template)
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            if not is_tiny_model(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def random_adapter(
    folder: str | os.PathLike,
    *,
    seed: int = 0,
    cache_dir: str | None = None,
    target: str | list[str] | None = None,
    **lora,
) -> Path:
    """A LoRA adapter for the tiny model with random, non-zero weights, laid out as `finetune`
    writes one (peft's files and glmflash.json): adapter serving tested and measured in seconds.
    `target`: module names or a regex (default: finetune's, the language model's projections);
    `lora`: further peft.LoraConfig settings."""
    import peft
    import torch
    from transformers import AutoModelForImageTextToText

    from ...config import ModelSettings
    from .adapters import TARGET, base_shape

    tiny = ensure_tiny_model(cache_dir or ModelSettings().cache_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny, dtype=torch.float32)  # its own: peft changes it
    torch.manual_seed(seed)
    config = peft.LoraConfig(
        r=4, lora_alpha=32, target_modules=target or TARGET, init_lora_weights=False, **lora
    )
    folder = Path(folder)
    shape = base_shape(model.config)
    peft.get_peft_model(model, config).save_pretrained(str(folder))
    (folder / "glmflash.json").write_text(json.dumps({"base_model": TINY_ID, "base_shape": shape}))
    return folder
