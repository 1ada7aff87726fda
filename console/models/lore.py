"""A world's lore: documents with versions, their chunks with embeddings (pgvector), the
concepts, events and relationships named in them, and the ingestion jobs that write them.

A document's text lives in its versions; the chunks of its current version are what search
and prompts read. Re-ingesting a changed document adds a version and replaces the chunks in
one transaction; an unchanged one (same checksum) is skipped.
"""

from django.db import models
from pgvector.django import HnswIndex, VectorField

from console.jobs.models import Job
from console.validators import lowercase_slug_validator

from .worlds import World

EMBEDDING_DIMENSIONS = 384  # all-MiniLM-L6-v2 (console.lore.embeddings)


class LoreDocument(models.Model):
    """One lore text of a world (a Markdown or text file, or a lorebook entry)."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="lore_documents")
    slug = models.CharField(max_length=64, validators=[lowercase_slug_validator])
    title = models.CharField(max_length=200)
    source = models.CharField(
        max_length=300, help_text="Where it came from: a file name, an upload, a lorebook."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["world__name", "title"]
        constraints = [
            models.UniqueConstraint(fields=["world", "slug"], name="lore_document_slug_unique_per_world"),
        ]

    def __str__(self) -> str:
        return self.title


class LoreVersionStatus(models.TextChoices):
    CURRENT = "current", "Current"
    SUPERSEDED = "superseded", "Superseded"


class LoreDocumentVersion(models.Model):
    """The text of a document as ingested once; only the current version has chunks."""

    document = models.ForeignKey(LoreDocument, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the text, for skipping unchanged files.")
    text = models.TextField()
    status = models.CharField(
        max_length=16, choices=LoreVersionStatus.choices, default=LoreVersionStatus.CURRENT
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["document", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["document", "number"], name="lore_version_number_unique"),
            models.UniqueConstraint(
                fields=["document"],
                condition=models.Q(status="current"),
                name="lore_version_one_current",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document} v{self.number}"


class LoreChunk(models.Model):
    """A passage of a document's current version, embedded for search."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="lore_chunks")
    document = models.ForeignKey(LoreDocument, on_delete=models.CASCADE, related_name="chunks")
    version = models.ForeignKey(LoreDocumentVersion, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    heading = models.CharField(max_length=200, blank=True, help_text="The section the passage is under.")
    text = models.TextField()
    tokens = models.PositiveIntegerField()
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    # Who may know it (lore gating): {"archetypes": [...], "subfactions": [...], "quests": [...]};
    # empty means everyone in the world.
    conditions = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["version", "ordinal"], name="lore_chunk_ordinal_unique"),
        ]
        indexes = [
            HnswIndex(
                name="lore_chunk_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.document} #{self.ordinal}"


class ConceptKind(models.TextChoices):
    PERSON = "person", "Person"
    PLACE = "place", "Place"
    FACTION = "faction", "Faction"
    ITEM = "item", "Item"
    OTHER = "other", "Other"


class Concept(models.Model):
    """A named thing of a world (person, place, faction, item) and the chunks that mention it."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="concepts")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=16, choices=ConceptKind.choices, default=ConceptKind.OTHER)
    chunks = models.ManyToManyField(LoreChunk, related_name="concepts", blank=True)
    conditions = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["world__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["world", "name"], name="concept_name_unique_per_world"),
        ]

    def __str__(self) -> str:
        return self.name


class LoreEvent(models.Model):
    """Something that happened in a world, with its year when the lore gives one."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="lore_events")
    year = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=500)
    concepts = models.ManyToManyField(Concept, related_name="events", blank=True)
    chunk = models.ForeignKey(LoreChunk, on_delete=models.CASCADE, related_name="events")

    class Meta:
        ordering = ["world__name", "year"]

    def __str__(self) -> str:
        return f"{self.year}: {self.description[:60]}" if self.year is not None else self.description[:60]


class ConceptRelation(models.Model):
    """Two concepts that the lore ties together (mentioned in the same passage, or stated)."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="concept_relations")
    source = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="relations_out")
    target = models.ForeignKey(Concept, on_delete=models.CASCADE, related_name="relations_in")
    kind = models.CharField(max_length=64, default="mentioned_with")
    weight = models.PositiveIntegerField(default=1, help_text="Passages that tie them.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "target", "kind"], name="concept_relation_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.kind} {self.target}"


class IngestJob(Job):
    """One ingestion run (files from a folder, or an upload): a long job as a database row."""

    world = models.ForeignKey(World, on_delete=models.CASCADE, related_name="ingest_jobs")
    source = models.CharField(max_length=500, help_text="The folder, file or upload ingested.")
    upload = models.FileField(upload_to="lore-uploads/", blank=True)
    documents_written = models.PositiveIntegerField(default=0)
    documents_skipped = models.PositiveIntegerField(default=0)
    chunks_written = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"ingest {self.source} ({self.status})"
