"""What the decode loop keeps from recent requests to skip work on the next ones: the KV of their
prompts and answers (prefix reuse) and the vision encoder's output for their images (image
reuse), each within a byte budget (GLMFLASH_PREFIX_CACHE_MB; 0 turns both off), least recently
used first out.

- Prefix reuse: a request whose prompt starts with what an earlier row held in its slot (the same
  token ids, and the same images by content hash) gets those keys and values copied into its own
  cache and prefills only the rest. A prefix never ends inside an image, and always leaves the
  last prompt token to prefill (its logits pick the first token). The rotary positions of the
  reused part are those the new prompt gives it (the same tokens and images before it give the
  same positions, GLM-4.6V's three streams included); the rest continues from them. Entries are
  kept per LoRA adapter: an adapter's keys and values are not the base model's.
- Image reuse: an image's features, keyed by its content hash and its patch grid (the grid
  follows from its size and the pixel budget), whatever prompt is around it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


def image_hash(image) -> str:
    """A PIL image's content hash (its mode, size and pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def image_keys(inputs: dict) -> tuple[str, ...]:
    """Each image's key in a row's inputs: its content hash and its patch grid (which follows from
    its size and the pixel budget); none when the hashes are not known."""
    hashes, grids = inputs.get("image_hashes"), inputs.get("image_grid_thw")
    if not hashes or grids is None or len(hashes) != len(grids):
        return ()
    return tuple(f"{h}/{'x'.join(str(int(x)) for x in grid)}" for h, grid in zip(hashes, grids, strict=True))


class ByteLRU:
    """Values with a size in bytes, at most `budget` bytes in all; the least recently used go first."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key, value, size: int) -> None:
        if size > self.budget:
            return
        self.pop(key)
        self.items[key] = (value, size)
        self.used += size
        while self.used > self.budget:
            _, (_, dropped) = self.items.popitem(last=False)
            self.used -= dropped

    def pop(self, key) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.used -= old[1]

    def values(self):
        return [value for value, _ in self.items.values()]


@dataclass(eq=False)
class Prefix:
    """One row's cached keys and values: `ids` (CPU, 1-D) and its images' hashes, in order."""

    adapter: str | None
    ids: torch.Tensor
    hashes: tuple[str, ...]
    keys: list[torch.Tensor]  # per layer, (kv heads, tokens, head dim)
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


@dataclass
class Tally:
    """What reuse saved, for /metrics and the tests."""

    prompts: int = 0  # prompts looked up
    prompt_tokens: int = 0
    prefix_hits: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were reused
    images: int = 0
    image_hits: int = 0
    evictions: dict = field(default_factory=dict)


class Reuse:
    """The loop's prefix and image-feature caches (one thread uses them: the loop's)."""

    def __init__(self, megabytes: int, image_token_id: int):
        budget = max(0, megabytes) * 2**20
        self.on = budget > 0
        self.prefixes = ByteLRU(budget)
        self.features = ByteLRU(budget)
        self.image_token_id = image_token_id
        self.tally = Tally()
        self._serial = 0

    # -- prefixes -----------------------------------------------------------------------------

    def find(self, ids: torch.Tensor, hashes, adapter: str | None) -> tuple[int, Prefix | None]:
        """The longest usable cached prefix of the prompt `ids` (1-D), its length and entry."""
        self.tally.prompts += 1
        self.tally.prompt_tokens += int(ids.numel())
        if not self.on:
            return 0, None
        ids = ids.cpu()
        best, chosen, key = 0, None, None
        for serial, entry in list(self.prefixes.items.items()):
            prefix = entry[0]
            if prefix.adapter != adapter:
                continue
            length = self._usable(ids, hashes, prefix)
            if length > best:
                best, chosen, key = length, prefix, serial
        if chosen is not None:
            self.prefixes.get(key)  # recently used
            self.tally.prefix_hits += 1
            self.tally.cached_tokens += best
        return best, chosen

    def _usable(self, ids: torch.Tensor, hashes, prefix: Prefix) -> int:
        n = min(int(ids.numel()) - 1, int(prefix.ids.numel()))  # the last prompt token is prefilled
        if n <= 0:
            return 0
        differ = (ids[:n] != prefix.ids[:n]).nonzero()
        length = int(differ[0]) if differ.numel() else n
        for index, start, end in _images(ids, self.image_token_id):  # never cut an image
            if start >= length:
                break
            known = index < len(hashes) and index < len(prefix.hashes)
            same = known and hashes[index] == prefix.hashes[index]
            if not same or end >= length:  # its end, too, must be common: another grid ends elsewhere
                return start
        return length

    def keep(self, adapter: str | None, ids: torch.Tensor, hashes, keys, values) -> None:
        """Remember a row's keys and values for the prompt and answer tokens `ids` (per layer,
        (kv heads, tokens, head dim), copied here); an entry it extends goes."""
        if not self.on or ids.numel() < 2:
            return
        ids = ids.cpu()
        for serial, (old, _) in list(self.prefixes.items.items()):
            if old.adapter == adapter and old.ids.numel() <= ids.numel():
                n = old.ids.numel()
                if torch.equal(old.ids, ids[:n]) and old.hashes == tuple(hashes[: len(old.hashes)]):
                    self.prefixes.pop(serial)
        entry = Prefix(adapter, ids, tuple(hashes), [k.clone() for k in keys], [v.clone() for v in values])
        self._serial += 1
        self.prefixes.put(self._serial, entry, entry.nbytes)

    # -- image features -----------------------------------------------------------------------

    def image_features(self, model, pixel_values, grids, keys: tuple[str, ...]) -> torch.Tensor:
        """The image features (tokens, hidden) of every image in order: those seen recently from
        the cache, the others from the vision encoder in one call. (The vision tower runs outside
        any row's adapter: its features are the same whichever adapter a row takes.)"""
        merge = model.config.vision_config.spatial_merge_size
        patches = [int(g.prod()) for g in grids]
        tokens = [p // merge**2 for p in patches]
        known: list[str | None] = list(keys) or [None] * len(patches)  # none known: encoded afresh
        cached = [self.features.get(key) if key is not None and self.on else None for key in known]
        found: list[torch.Tensor | None] = [f[0] if f is not None else None for f in cached]
        self.tally.images += len(patches)
        self.tally.image_hits += sum(f is not None for f in found)
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            starts = [sum(patches[:i]) for i in range(len(patches))]
            pixels = torch.cat([pixel_values[starts[i] : starts[i] + patches[i]] for i in missing])
            computed = encode(model, pixels, grids[missing])
            for i, features in zip(missing, computed.split([tokens[i] for i in missing]), strict=True):
                found[i] = features
                if known[i] is not None and self.on:
                    self.features.put(known[i], features, features.numel() * features.element_size())
        return torch.cat([f for f in found if f is not None])  # every one found or computed by now


def encode(model, pixel_values, grids) -> torch.Tensor:
    """The vision encoder's features (tokens, hidden) for these images' patches."""
    features = model.get_image_features(pixel_values, grids)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, list | tuple):
        features = torch.cat(list(features))
    return features


def _images(ids: torch.Tensor, image_token_id: int):
    """(index, first, end) of each run of image tokens in `ids`, in order."""
    marks = (ids == image_token_id).to(torch.int8)
    if not marks.any():
        return []
    zero = torch.zeros(1, dtype=torch.int8)
    edges = torch.diff(marks, prepend=zero, append=zero)
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return [(i, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]
