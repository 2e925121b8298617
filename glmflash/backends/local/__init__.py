"""The local engine: loading the model (load.py), the batcher that alone calls `model.generate`
(batcher.py), compiled decoding (decoding.py) and grammar masks (grammar.py). Importing this
package imports no torch; its modules do.
"""
