"""The HTTP API from Python with the standard library only: publish, rooms, members, history.

python examples/client_http_api.py [http://127.0.0.1:8000] [API_KEY]
"""

import sys

from roomcast.client import ApiError, HttpApi

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
api = HttpApi(url, api_key=sys.argv[2] if len(sys.argv) > 2 else None)

offset = api.publish("lobby", "news", {"headline": "roomcast is up"})
print("published at offset", offset)
print("rooms:", api.rooms())
print("lobby members:", api.members("lobby"))
history = api.history("lobby", since=offset - 1)
print("history:", [m["payload"] for m in history["messages"]])
try:
    api.publish("lobby", "news", {"headline": "psst"}, to="nobody")
except ApiError as exc:
    print("refused:", exc.status, exc.wire_code)
