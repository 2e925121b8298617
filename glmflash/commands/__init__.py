"""The command-line tools beyond chat and serve: batch, bench, check, and the port probe start.sh
runs before anything heavy is imported.
"""
