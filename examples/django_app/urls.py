"""The Django routes; roomcast is not among them: asgi.py sends `/rt/...` to it."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("login", views.login),
    path("logout", views.logout),
    path("whoami", views.whoami),
    path("rooms/<str:room>/announce", views.announce),
]
