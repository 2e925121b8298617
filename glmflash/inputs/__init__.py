"""What a caller sends, checked before any generation: chat messages, images (bytes, paths, data
URLs, guarded http(s) fetches), PDFs as their pages, and what each costs in visual tokens
(pixels.py). No torch here.
"""
