"""NPC memory tiers (hot in-process, Redis for 30 days, Postgres for life), cards,
summaries, salient facts and archival; lore retrieval for prompts.
"""
