"""The engines behind the contract (contract.EngineBase): `local` runs the transformers model on
this machine, `remote` speaks to any OpenAI-compatible server over HTTP. `glmflash.load()` picks
one from registry.py's table, where each backend registers itself with one line: a new backend is
one module here plus its `register(...)` line.
"""
