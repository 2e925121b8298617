"""Batch jobs: task presets with schema-checked answers (tasks.py) and the resumable runner that
writes them as JSON lines (runner.py).
"""
