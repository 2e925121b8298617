"""The engines behind the contract (contract.EngineBase): `local` runs the transformers model on
this machine, `remote` speaks to any OpenAI-compatible server over HTTP.
"""
