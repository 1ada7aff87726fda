"""The permission matrix: designers and ops against each admin page, 200 or 403 as designed."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import ArchetypeFactory, UserFactory

pytestmark = pytest.mark.django_db

# (admin URL name, expected for designers, expected for ops). Written out by hand, not
# derived from console/permissions.py, so a wrong grant there fails here.
MATRIX = [
    ("admin:console_world_changelist", 200, 200),
    ("admin:console_region_changelist", 200, 200),
    ("admin:console_archetype_changelist", 200, 200),
    ("admin:console_subfaction_changelist", 200, 200),
    ("admin:console_npc_changelist", 200, 200),
    ("admin:console_basemodel_changelist", 200, 200),
    ("admin:console_adapter_changelist", 200, 200),
    ("admin:console_gameclientkey_changelist", 403, 200),
    ("admin:auth_user_changelist", 403, 200),
    ("admin:auth_group_changelist", 403, 200),
    ("admin:django_celery_results_taskresult_changelist", 403, 200),
    ("admin:django_celery_beat_periodictask_changelist", 403, 200),
    ("admin:console_world_add", 200, 403),
    ("admin:console_archetype_add", 200, 403),
    ("admin:console_npc_add", 200, 403),
    ("admin:console_adapter_add", 403, 403),
    ("admin:console_basemodel_add", 403, 403),
    ("admin:console_gameclientkey_add", 403, 200),
    ("admin:auth_user_add", 403, 403),
    ("admin:auth_group_add", 403, 403),
    ("playtest", 200, 200),
    ("admin:memory_memoryevent_changelist", 200, 200),
    ("admin:memory_forgottenplayer_changelist", 403, 200),
    ("admin:memory_memoryevent_add", 403, 403),
    ("admin:memory_warm_npcs", 200, 200),
]


@pytest.mark.parametrize(("url_name", "designer_status", "ops_status"), MATRIX)
def test_admin_page_permissions(designer_client, ops_client, url_name, designer_status, ops_status):
    url = reverse(url_name)

    assert designer_client.get(url).status_code == designer_status
    assert ops_client.get(url).status_code == ops_status


def test_designer_can_open_an_archetype_and_its_history(designer_client):
    archetype = ArchetypeFactory()

    assert (
        designer_client.get(reverse("admin:console_archetype_change", args=[archetype.pk])).status_code == 200
    )
    assert (
        designer_client.get(reverse("admin:console_archetype_history", args=[archetype.pk])).status_code
        == 200
    )


def test_ops_cannot_change_an_archetype(ops_client):
    archetype = ArchetypeFactory()

    response = ops_client.post(
        reverse("admin:console_archetype_change", args=[archetype.pk]), {"name": "Hacked"}
    )

    archetype.refresh_from_db()
    assert response.status_code == 403
    assert archetype.name != "Hacked"


def test_anonymous_visitor_is_sent_to_login():
    response = Client().get(reverse("admin:console_archetype_changelist"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_staff_without_group_sees_nothing():
    user = UserFactory(is_staff=True)
    client = Client()
    client.force_login(user)

    assert client.get(reverse("admin:console_archetype_changelist")).status_code == 403
