"""Lore: what a world's NPCs may know, from the designer's files to the turn's prompt.

- files: one Markdown/text document read and checked (front matter: its gating conditions)
- lorebook: SillyTavern / TavernAI World Info, one document per entry
- chunking: a document into passages under their headings, by the embedding model's tokens
- embeddings: the sentence-embedding model (bundled, loaded offline, one per process)
- ingest: files into versioned documents and embedded chunks, as an ingest job
- graph: the concepts, events and ties the lore names (the lore graph page)
- gating: who may know a chunk (archetype, subfaction, quest stage)
- search: the designers' lore search (pgvector HNSW)
- packs: each NPC's lore pack in Redis, and the turn's lore from it (no Postgres on the turn)
"""
