"""What an image of a given size costs the model in visual tokens (images and PDF pages alike)."""

PIXELS_PER_TOKEN = 28 * 28  # one LLM token per 28x28 pixels after the 2x2 merge


def visual_tokens(width: int, height: int) -> int:
    """Approximate visual tokens the model spends on an image of this size."""
    return max(1, round(width * height / PIXELS_PER_TOKEN))
