"""The system of record. One module per concept; import models from here."""

from .adapters import Adapter, AdapterScope, AdapterStatus, AdapterTask, BaseModel
from .archetypes import Archetype, Subfaction
from .keys import GameClientKey, GameKeyScope
from .lore import (
    Concept,
    ConceptKind,
    ConceptRelation,
    IngestJob,
    LoreChunk,
    LoreDocument,
    LoreDocumentVersion,
    LoreEvent,
    LoreVersionStatus,
)
from .npcs import NPC, NPCStatus
from .worlds import Region, World

__all__ = [
    "NPC",
    "Adapter",
    "AdapterScope",
    "AdapterStatus",
    "AdapterTask",
    "Archetype",
    "BaseModel",
    "Concept",
    "ConceptKind",
    "ConceptRelation",
    "GameClientKey",
    "GameKeyScope",
    "IngestJob",
    "LoreChunk",
    "LoreDocument",
    "LoreDocumentVersion",
    "LoreEvent",
    "LoreVersionStatus",
    "NPCStatus",
    "Region",
    "Subfaction",
    "World",
]
