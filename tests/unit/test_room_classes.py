"""Room classes (roomcast.room_classes): values, resolution by room ID, the TOML loader, and
the Python API (`Roomcast(room_classes=...)`, `Settings(room_classes=...)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roomcast import ConfigError, Roomcast, RoomClass, Settings
from roomcast.room_classes import RoomClasses, load_room_classes
from roomcast.testing import ClientClosed, TestServer


def test_resolve_by_prefix() -> None:
    """`<class>:<rest>` takes the class; an unknown prefix, or none, the default."""
    classes = RoomClasses(
        {"chat": RoomClass(history_size=5), "feed": RoomClass(presence=False)},
        history_size=100,
        history_ttl=30,
        on_duplicate="reject",
    )
    chat = classes.resolve("chat:lobby")
    assert (chat.name, chat.history_size, chat.history_ttl) == ("chat", 5, 30)
    assert chat.on_duplicate == "reject"
    assert classes.resolve("chat:a:b").name == "chat"
    for room in ("chat", "chatx:1", "lobby", ":chat", "other:chat:1"):
        assert classes.resolve(room) is classes.default
    assert classes.default.history_size == 100
    feed = classes.resolve("feed:news")
    assert not feed.presence
    assert not feed.announces
    assert feed.on_duplicate == "reject"  # the server's policy
    assert feed.tracked  # its members are kept, unseen, to find a duplicate


@pytest.mark.parametrize(
    ("cls", "policy", "tracked"),
    [
        (RoomClass(), "share", True),
        (RoomClass(presence=False), "share", False),
        (RoomClass(presence=False), "reject", True),
        (RoomClass(presence=False), "replace", True),
        (RoomClass(presence=False, on_duplicate="share"), "reject", False),
        (RoomClass(presence=False, on_duplicate="reject"), "share", True),
        (RoomClass(presence=False, max_members=3), "share", True),
    ],
)
def test_a_room_without_presence_keeps_members_only_when_needed(
    cls: RoomClass, policy: Any, tracked: bool
) -> None:
    """Member entries are kept with presence, and without it where a duplicate must be found
    (`reject`, `replace`) or members counted (`max_members`)."""
    resolved = RoomClasses({"c": cls}, on_duplicate=policy).resolve("c:1")
    assert resolved.tracked is tracked


def test_personal_owner() -> None:
    """A personal class admits the ID's rest; other classes name no owner."""
    classes = RoomClasses({"user": RoomClass(personal=True), "chat": RoomClass()})
    assert classes.resolve("user:alice").owner("user:alice") == "alice"
    assert classes.resolve("user:").owner("user:") == ""
    assert classes.resolve("chat:alice").owner("chat:alice") is None


def test_longest_ttl() -> None:
    """The sweep's ttl is the longest of every class."""
    classes = RoomClasses({"a": RoomClass(history_ttl=10), "b": RoomClass(history_ttl=900)})
    assert classes.longest_ttl == 900
    assert RoomClasses(history_ttl=42).longest_ttl == 42


def test_ephemeral_topics_are_a_frozenset() -> None:
    """Any collection of topics becomes a frozenset."""
    cls = RoomClass(ephemeral_topics=["typing", "cursor", "typing"])  # type: ignore[arg-type]
    assert cls.ephemeral_topics == frozenset({"typing", "cursor"})
    resolved = RoomClasses({"chat": cls}).resolve("chat:1")
    assert resolved.ephemeral_topics == frozenset({"typing", "cursor"})


@pytest.mark.parametrize(
    ("values", "setting"),
    [
        ({"history_size": -1}, "history_size"),
        ({"history_size": 1.5}, "history_size"),
        ({"history_ttl": 0}, "history_ttl"),
        ({"history_ttl": "5"}, "history_ttl"),
        ({"history_ttl": float("inf")}, "history_ttl"),
        ({"history_ttl": float("nan")}, "history_ttl"),
        ({"history_ttl": 315_360_001}, "history_ttl"),
        ({"presence": "no"}, "presence"),
        ({"max_members": 0}, "max_members"),
        ({"max_members": True}, "max_members"),
        ({"on_duplicate": "kick"}, "on_duplicate"),
        ({"ephemeral_topics": "typing"}, "ephemeral_topics"),
        ({"ephemeral_topics": ["$x"]}, "ephemeral_topics"),
    ],
)
def test_bad_values_name_the_setting(values: dict[str, Any], setting: str) -> None:
    """A bad value in Python raises ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=f"^{setting}: "):
        RoomClass(**values)


@pytest.mark.parametrize("name", ["", "a:b", "a b", "x" * 129])
def test_bad_class_names(name: str) -> None:
    """A class name must be able to prefix a room ID."""
    with pytest.raises(ConfigError, match="room class name"):
        Settings(room_classes={name: RoomClass()})


def test_settings_take_classes_from_the_file(tmp_path: Path) -> None:
    """`Settings(config=...)` reads the file; `from_sources` reads `ROOMCAST_CONFIG`."""
    path = tmp_path / "rooms.toml"
    path.write_text('[rooms.chat]\nhistory_size = 7\nephemeral_topics = ["typing"]\n')
    expected = {"chat": RoomClass(history_size=7, ephemeral_topics=frozenset({"typing"}))}
    assert Settings(config=str(path)).room_classes == expected
    from_env = Settings.from_sources({}, {"ROOMCAST_CONFIG": str(path)})
    assert from_env.room_classes == expected
    assert load_room_classes(str(path)) == expected


def test_settings_refuse_what_is_no_class() -> None:
    """A value that is not a RoomClass is refused, by class name."""
    with pytest.raises(ConfigError, match="room class 'chat': expected a RoomClass"):
        Settings(room_classes={"chat": {"history_size": 5}})  # type: ignore[dict-item]


async def test_python_api_classes() -> None:
    """`Roomcast(room_classes=...)`: a feed refuses client frames, a personal room other
    users, a small room its third member; the default class is untouched."""
    rc = Roomcast(
        room_classes={
            "feed": RoomClass(client_publish=False, presence=False),
            "user": RoomClass(personal=True),
            "small": RoomClass(max_members=1),
        }
    )
    async with TestServer(rc) as server:
        alice = await server.connect("alice", "feed:news")
        assert alice.welcome["payload"]["members"] == []
        await alice.send("chat", "hi", id=1)
        error = await alice.receive_topic("error")
        assert (error["payload"]["code"], error["payload"]["id"]) == ("forbidden", 1)
        with pytest.raises(ClientClosed) as closed:
            await server.connect("bob", "user:alice")
        assert closed.value.code == 4403
        await server.connect("carol", "small:1")
        dave = await server.connect("dave", "small:1", joined=False)
        assert dave.welcome["payload"]["code"] == "room_full"
        assert dave.closed is not None
        assert dave.closed[0] == 4429
        eve = await server.connect("eve", "lobby")
        await eve.send("chat", "hi", id=2)
        assert (await eve.receive_topic("chat"))["payload"] == "hi"


def test_python_api_adds_to_the_settings_classes() -> None:
    """Classes given to Roomcast add to (and override) those of its settings."""
    settings = Settings(
        room_classes={"chat": RoomClass(history_size=5), "feed": RoomClass(presence=False)}
    )
    rc = Roomcast(settings, room_classes={"chat": RoomClass(history_size=9)})
    assert rc.node.classes.resolve("chat:1").history_size == 9
    assert not rc.node.classes.resolve("feed:1").presence


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"history_ttl": float("inf")}, "history-ttl"),
        ({"presence_ttl": float("nan")}, "presence-ttl"),
        ({"webhook_timeout": float("-inf")}, "webhook-timeout"),
        ({"history_ttl": 1e20}, "history-ttl"),
    ],
)
def test_settings_refuse_numbers_past_their_range(values: dict[str, Any], flag: str) -> None:
    """A setting that is not a finite number (NaN would pass every bound), or a history ttl
    past ten years, raises ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=flag):
        Settings(**values)
