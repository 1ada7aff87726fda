"""The permission groups: who may do what in the console.

`designers` shape the world (worlds, archetypes, subfactions, NPCs, adapter metadata, lore)
and choose which remembered facts an NPC shares with every player; `ops` read everything and
manage game client keys. Designers never reach users, groups or keys. Migrations call
`groups_sync` so a fresh database has both groups; later migrations that add models or
permissions call it again.
"""

from __future__ import annotations

from typing import Any

DESIGNERS = "designers"
OPS = "ops"

ALL = ("add", "change", "delete", "view")
VIEW = ("view",)
# The playtest page: chat with an NPC through the game websocket as a console user.
PLAYTEST = ("playtest",)
# Mark an NPC's remembered fact as known to every player (the warm memory pages).
PUBLISH = ("publish",)
# The live ops dashboard (console.views.ops_dashboard), a permission on regions.
WATCH = ("watch",)

# (app_label, model) -> actions, per group. Model names are lowercase, as in Permission.codename.
GROUP_PERMISSIONS: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {
    DESIGNERS: {
        ("console", "world"): ALL,
        ("console", "region"): ALL + WATCH,
        ("console", "archetype"): ALL,
        ("console", "subfaction"): ALL,
        ("console", "npc"): ALL + PLAYTEST,
        # Designers edit adapter metadata (status, notes); artifacts come from training.
        ("console", "adapter"): ("change", "view"),
        ("console", "basemodel"): VIEW,
        ("console", "historicalarchetype"): VIEW,
        ("console", "historicalsubfaction"): VIEW,
        ("console", "historicalnpc"): VIEW,
        ("console", "historicaladapter"): VIEW,
        # Designers read NPC memory (archive and Redis) and choose the facts every player shares.
        ("memory", "memoryevent"): VIEW + PUBLISH,
        # Lore: designers ingest and edit; versions and chunks are written by ingestion only.
        ("console", "loredocument"): ALL,
        ("console", "loredocumentversion"): VIEW,
        ("console", "lorechunk"): ("change", "view"),  # gating conditions
        ("console", "concept"): ALL,
        ("console", "loreevent"): VIEW,
        ("console", "conceptrelation"): VIEW,
        ("console", "ingestjob"): ("add", "view"),
        # Training: designers teach (examples, approved turns), build datasets and train.
        ("training", "exampleexchange"): ALL,
        ("training", "transcriptapproval"): ("add", "view", "delete"),
        ("training", "dataset"): ("add", "view"),
        ("training", "trainingjob"): ("add", "change", "view"),  # change: cancel
        ("training", "evalrun"): ("add", "view"),
        ("training", "provisionrun"): ("add", "view"),
    },
    OPS: {
        ("console", "world"): VIEW,
        ("console", "region"): VIEW + WATCH,
        ("console", "archetype"): VIEW,
        ("console", "subfaction"): VIEW,
        ("console", "npc"): VIEW + PLAYTEST,
        ("console", "adapter"): VIEW,
        ("console", "basemodel"): VIEW,
        ("console", "gameclientkey"): ALL,
        ("console", "historicalarchetype"): VIEW,
        ("console", "historicalsubfaction"): VIEW,
        ("console", "historicalnpc"): VIEW,
        ("console", "historicaladapter"): VIEW,
        # Forgetting a player (a deletion request) is an ops task.
        ("memory", "memoryevent"): ("view", "delete"),
        ("memory", "forgottenplayer"): VIEW,
        ("console", "loredocument"): VIEW,
        ("console", "loredocumentversion"): VIEW,
        ("console", "lorechunk"): VIEW,
        ("console", "concept"): VIEW,
        ("console", "loreevent"): VIEW,
        ("console", "conceptrelation"): VIEW,
        ("console", "ingestjob"): VIEW,
        ("training", "exampleexchange"): VIEW,
        ("training", "transcriptapproval"): VIEW,
        ("training", "dataset"): VIEW,
        ("training", "trainingjob"): VIEW,
        ("training", "evalrun"): VIEW,
        ("training", "provisionrun"): VIEW,
        ("auth", "user"): VIEW,
        ("auth", "group"): VIEW,
        ("django_celery_results", "taskresult"): VIEW,
        ("django_celery_results", "groupresult"): VIEW,
        ("django_celery_beat", "periodictask"): VIEW,
        ("django_celery_beat", "intervalschedule"): VIEW,
        ("django_celery_beat", "crontabschedule"): VIEW,
    },
}


def groups_sync(apps: Any, schema_editor: Any = None) -> None:
    """Create both groups and set their permissions to exactly GROUP_PERMISSIONS.

    Works with the migration state's `apps` and skips permissions whose model does not
    exist yet, so old migrations keep working as models are added.
    """
    from django.apps import apps as global_apps
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after all migrations ran (post_migrate); a fresh
    # database needs them now.
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, apps=apps, verbosity=0)

    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for group_name, grants in GROUP_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=group_name)
        wanted = [
            permission
            for (app_label, model), actions in grants.items()
            for permission in permission_model.objects.filter(
                content_type__app_label=app_label,
                content_type__model=model,
                codename__in=[f"{action}_{model}" for action in actions],
            )
        ]
        group.permissions.set(wanted)
