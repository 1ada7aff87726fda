"""Datasets curated from lore and transcripts, PEFT LoRA training jobs, the eval harness
with quality gates, adapter versions and composition.
"""
