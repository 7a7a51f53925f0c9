"""roomcast mounted in a Django ASGI application, authenticating connections from Django's
session.

- `asgi.py`: the ASGI application: `/rt/...` goes to roomcast, everything else to Django, and
  the lifespan starts and stops roomcast (Django itself ignores lifespan).
- `realtime.py`: the `Roomcast` instance and its identity resolver, which reads the Django
  session named by the WebSocket request's session cookie (any `SESSION_ENGINE`).
- `views.py`: Django views: log in (writes the username into the session), log out, and an
  announcement view that sends a roomcast command.
- `settings.py`, `urls.py`: a minimal Django project (signed-cookie sessions, no database).

Run it from the repository root:

    uvicorn --app-dir examples django_app.asgi:application

then `POST /login {"username": "alice", "password": "wonderland"}` and connect to
`ws://127.0.0.1:8000/rt/api/v1/ws?roomID=lobby` with the `sessionid` cookie it set.
`tests/integration/test_django_example.py` runs it under uvicorn.
"""
