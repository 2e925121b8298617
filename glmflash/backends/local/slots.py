"""The token loop's KV cache and its decode step: fixed slots of keys and values per layer, each
running row in its own slot writing at its own column, so that one decode step has the same
shapes whoever joins or leaves (no padding of the whole cache when a row joins, no cutting when
one leaves); and that step, eager or compiled (GLMFLASH_COMPILE).

The running rows sit in slots 0..n-1 (a row that leaves has its place taken by the last one, one
slot's columns copied). A slot holds at most `tokens` columns (scheduler.slot_tokens, within the
KV budget); the tensors grow by doubling up to that as rows need more, so a small model's cache
is small. A step attends over a window of columns (a bucket above the longest row's), each row
masked to its own. Compiled on the CPU, the step's shapes are symbolic (one compilation serves
every row count and window); on CUDA it is replayed as CUDA graphs (torch.compile's
reduce-overhead mode), one per shape, so its shapes are bucketed (rows: a power of two up to the
slots; window: powers of two from MIN_WINDOW).
"""

from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger("glmflash")
MIN_WINDOW = 256  # attention windows are powers of two from here: few shapes, few compilations


def bucket(needed: int, limit: int, start: int = MIN_WINDOW) -> int:
    """The next power of two from `start` that holds `needed`, never past `limit` (nor below
    `needed`)."""
    size = start
    while size < needed:
        size *= 2
    return max(needed, min(size, limit))


class Slots:
    """Keys and values per layer, (slots, kv heads, columns, head dim) each."""

    def __init__(self, model, slots: int, tokens: int):
        text = model.config.get_text_config(decoder=True)
        self.layers = text.num_hidden_layers
        self.heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.slots, self.tokens = slots, tokens
        self.dtype, self.device = model.dtype, model.device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def columns(self) -> int:
        """Columns allocated per slot now."""
        return self.keys[0].shape[2] if self.keys else 0

    def reserve(self, columns: int) -> None:
        """Make room for `columns` columns per slot (the tensors grow by doubling, kept columns
        copied)."""
        if columns <= self.columns:
            return
        size = bucket(columns, self.tokens)
        shape = (self.slots, self.heads, size, self.head_dim)
        kept = self.columns
        for tensors in (self.keys, self.values):
            grown = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
            for old, new in zip(tensors, grown, strict=False):
                new[:, :, :kept] = old
            tensors[:] = grown
        if self.device.type == "cuda":  # CUDA graphs read them where they were recorded
            for tensor in (*self.keys, *self.values):
                torch._dynamo.mark_static_address(tensor)

    def put(self, slot: int, cache, row: int, first: int, length: int) -> None:
        """Copy `length` columns of row `row` of a prefill's cache (a DynamicCache), from its
        column `first`, into slot `slot`'s columns 0..length-1."""
        self.reserve(length)
        for layer, part in enumerate(cache.layers):
            self.keys[layer][slot, :, :length] = part.keys[row, :, first : first + length]
            self.values[layer][slot, :, :length] = part.values[row, :, first : first + length]

    def move(self, source: int, target: int, length: int) -> None:
        """Slot `source`'s first `length` columns into slot `target`."""
        for tensors in (self.keys, self.values):
            for tensor in tensors:
                tensor[target, :, :length] = tensor[source, :, :length]

    def drop(self) -> None:
        """Let the memory go (after a failure its contents are not known)."""
        self.keys, self.values = [], []


class _Writes:
    """What the model's attention layers take as their cache for one step: each row's new key and
    value go to its own column of its slot; the layer attends over the window's columns."""

    def __init__(self, keys, values, columns: torch.Tensor, window: int):
        self.keys, self.values, self.window = keys, values, window
        self.rows = columns.shape[0]
        self.index = columns.view(-1, 1, 1, 1)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        index = self.index.expand(self.rows, key.shape[1], 1, key.shape[3])
        keys = self.keys[layer_idx][: self.rows]
        values = self.values[layer_idx][: self.rows]
        keys.scatter_(2, index, key)
        values.scatter_(2, index, value)
        return keys[:, :, : self.window], values[:, :, : self.window]


def _decode(model, keys, values, ids, positions, columns, window: int):
    """One token for each row: (rows, vocab) float logits. `columns`: where each row writes (and
    the last column it sees)."""
    seen = torch.arange(window, device=ids.device)[None, :] <= columns[:, None]
    mask = torch.zeros(seen.shape, dtype=keys[0].dtype, device=ids.device)
    mask = mask.masked_fill(~seen, torch.finfo(keys[0].dtype).min)[:, None, None, :]
    out = model(
        input_ids=ids,
        position_ids=positions,
        attention_mask=mask,
        past_key_values=_Writes(keys, values, columns, window),
        use_cache=True,
    )
    return out.logits[:, -1].float()


def _decode_one(*args):
    return _decode(*args)


def _decode_many(*args):
    return _decode(*args)


class Decoder:
    """The decode step over `slots`, eager or compiled."""

    def __init__(self, model, slots: Slots, pad_id: int, *, compiled: bool):
        self.model, self.slots, self.pad_id, self.compiled = model, slots, pad_id, compiled
        self.shapes: set[tuple[int, int]] = set()  # (rows, window) stepped, for tests and warm-up
        self._one = self._many = _decode
        # CUDA graphs replay fixed shapes: there the rows and the window come in buckets, one graph
        # each; on the CPU the shapes are symbolic from the start, so exact sizes cost no compiling.
        # One row and several are compiled apart (a size of 1 is always specialised): each call
        # then checks the guards of one compiled graph only, which costs as much as a small step.
        self.buckets = compiled and slots.device.type == "cuda"
        if compiled:
            mode = "reduce-overhead" if self.buckets else "default"
            dynamic = None if self.buckets else True
            self._one = torch.compile(_decode_one, mode=mode, dynamic=dynamic)
            self._many = torch.compile(_decode_many, mode=mode, dynamic=dynamic)

    def rows(self, running: int) -> int:
        """The batch a step runs for `running` rows: bucketed for CUDA graphs."""
        if not self.buckets:
            return running
        return min(self.slots.slots, bucket(running, self.slots.slots, start=1))

    def step(self, ids: list[int], positions: list[int], columns: list[int]) -> torch.Tensor:
        """Logits (rows, vocab) for the running rows in slots 0..n-1: row i's token `ids[i]` at
        rotary position `positions[i]`, written at its cache column `columns[i]`."""
        running, device = len(ids), self.slots.device
        rows = self.rows(running)
        spare = rows - running  # slots beyond the running rows are free: write there, ignore them
        longest = max(columns) + 1
        self.slots.reserve(longest + 1)  # the window is always a part of the columns, never all
        window = bucket(longest, self.slots.columns) if self.buckets else longest
        self.shapes.add((rows, window))
        ids_t = torch.tensor([*ids, *[self.pad_id] * spare], device=device)[:, None]
        where = torch.tensor([*positions, *[0] * spare], device=device)[None, :, None].expand(3, -1, -1)
        columns_t = torch.tensor([*columns, *[0] * spare], device=device)
        with self._attention():
            step = self._one if rows == 1 else self._many
            if rows > 1 and self.compiled and not self.buckets:  # any row count: one graph
                for tensor, dim in ((ids_t, 0), (where, 1), (columns_t, 0)):
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
            logits = step(self.model, self.slots.keys, self.slots.values, ids_t, where, columns_t, window)
        return logits[:running]

    @contextlib.contextmanager
    def _attention(self):
        """Compiled on the CPU, plain attention (matmuls and a softmax, which inductor fuses):
        measured faster than SDPA there, whose inputs it first copies whole. The text config
        says which the layers use; only this loop's thread runs the model meanwhile."""
        if not self.compiled or self.buckets:
            yield
            return
        config = self.model.config.get_text_config(decoder=True)
        kept, config._attn_implementation = config._attn_implementation, "eager"
        try:
            yield
        finally:
            config._attn_implementation = kept
