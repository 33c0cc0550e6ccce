"""Data operations: ingest, synth, validate, clean, label, split."""
