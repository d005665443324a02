"""Batches: many tasks, each a real `airlock run`, scheduled, resumable, with a live board and a summary."""
