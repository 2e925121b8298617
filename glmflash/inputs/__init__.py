"""What a caller sends, checked before any generation: chat messages, images (bytes, paths, data
URLs, guarded http(s) fetches). No torch here.
"""
