"""The local engine: loading the model (load.py), the decode loop where requests join and leave
per token (scheduler.py, with prefill.py and rows.py), static batches for compiled decoding
(batcher.py, decoding.py) and grammar masks (grammar.py). Importing this package imports no
torch; its modules do.
"""

from ..registry import register

# Every model argument that no other backend claims: "auto", "tiny", a folder, a hub id.
register("local", claims=lambda target: True, open="glmflash.backends.local.load:open_local", fallback=True)
