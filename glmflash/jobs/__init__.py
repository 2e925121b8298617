"""Batch jobs: task presets with schema-checked answers (tasks.py), which files a job reads
(inputs.py), the resumable runner that writes answers as JSON lines (runner.py) and their CSV
export (export.py).
"""
