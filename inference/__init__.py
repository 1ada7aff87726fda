"""Everything between "an NPC must speak" and tokens: prompt assembly, adapter routing and
fallback, activation tiers, the vLLM engine client, worker launch and adapter residency.
"""
