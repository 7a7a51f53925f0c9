"""Room classes (docs/protocol.md, section 9): settings for a set of rooms, by room ID.

A room whose ID is `<class>:<rest>` belongs to the class `<class>` when one of that name is
configured; every other room belongs to the default class, whose settings are the server's
flags. Classes come from a TOML file (`roomcast serve --config FILE`, read by
:func:`load_room_classes`) or from Python (`Roomcast(room_classes={"feed": RoomClass(...)})`).

:class:`RoomClass` is what a file or the Python API configures (`None`: the server's flag);
:class:`RoomClasses` resolves a room ID to its :class:`ResolvedClass`, every setting filled in.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .errors import ConfigError, FrameError
from .protocol import is_builtin, validate_name, validate_topic

__all__ = [
    "DUPLICATE_POLICIES",
    "MAX_HISTORY_TTL",
    "DuplicatePolicy",
    "ResolvedClass",
    "RoomClass",
    "RoomClasses",
    "load_room_classes",
]

DuplicatePolicy = Literal["reject", "replace", "share"]
DUPLICATE_POLICIES: tuple[DuplicatePolicy, ...] = get_args(DuplicatePolicy)
MAX_HISTORY_TTL = 315_360_000
"""The longest `history_ttl`, in seconds (ten years): far below where a Redis expiry in
milliseconds overflows (which `inf` or `1e20` would)."""


class _BadSetting(ConfigError):
    """A value of one setting of a class is not allowed (the file loader adds where)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.reason = message


@dataclass(frozen=True, slots=True)
class RoomClass:
    """The settings of one room class; `None` (and every default) keeps the server's.

    Raises:
        ConfigError: a value that is not allowed, naming the setting.
    """

    history_size: int | None = None
    """Messages retained per room; 0 keeps none. None: `--history-size`."""
    history_ttl: float | None = None
    """Seconds each retained message of a room lives after its publish. None: `--history-ttl`."""
    presence: bool = True
    """False: no member lists, no presence frames. Under `share` (and without `max_members`)
    nothing of presence is kept in the broker either: the cheapest join there is; under
    `reject` or `replace` the members are kept, unseen, to find a username's duplicate."""
    join_leave: bool = True
    """False: member lists as usual, but no `presence.join`/`presence.leave` frames."""
    client_publish: bool = True
    """False: frames from clients to the room answer `forbidden` (the server still publishes)."""
    ephemeral_topics: frozenset[str] = frozenset()
    """Topics relayed without an offset and never stored (section 10)."""
    max_members: int | None = None
    """Members a room holds at most, cluster-wide; None: no limit."""
    on_duplicate: DuplicatePolicy | None = None
    """`reject`, `replace` or `share` for this class's rooms. None: the server's policy."""
    personal: bool = False
    """Only the user named by the rest of the room ID (`user:alice`: alice) may join."""

    def __post_init__(self) -> None:
        _check_int("history_size", self.history_size, minimum=0, optional=True)
        if self.history_ttl is not None:
            if isinstance(self.history_ttl, bool) or not isinstance(self.history_ttl, int | float):
                raise _BadSetting("history_ttl", f"expected a number, got {self.history_ttl!r}")
            if not 0 < self.history_ttl <= MAX_HISTORY_TTL:
                raise _BadSetting(
                    "history_ttl", f"must be > 0 and <= {MAX_HISTORY_TTL}, got {self.history_ttl}"
                )
        for name in ("presence", "join_leave", "client_publish", "personal"):
            if not isinstance(getattr(self, name), bool):
                raise _BadSetting(name, f"expected true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "ephemeral_topics", _topics(self.ephemeral_topics))
        _check_int("max_members", self.max_members, minimum=1, optional=True)
        if self.on_duplicate is not None and self.on_duplicate not in DUPLICATE_POLICIES:
            raise _BadSetting(
                "on_duplicate", f"must be reject, replace or share, got {self.on_duplicate!r}"
            )


def _check_int(name: str, value: object, *, minimum: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadSetting(name, f"expected an integer, got {value!r}")
    if value < minimum:
        raise _BadSetting(name, f"must be >= {minimum}, got {value}")


def _topics(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise _BadSetting("ephemeral_topics", f"expected a list of topics, got {value!r}")
    topics = []
    for topic in value:
        try:
            validate_topic(topic)
        except FrameError as exc:
            raise _BadSetting("ephemeral_topics", f"{exc.message}, got {topic!r}") from None
        if is_builtin(topic):
            raise _BadSetting("ephemeral_topics", f"{topic!r} is a built-in topic, never relayed")
        topics.append(topic)
    return frozenset(topics)


@dataclass(frozen=True, slots=True)
class ResolvedClass:
    """Every setting of the class one room belongs to, the server's flags filled in."""

    name: str
    """The class name; empty for the default class."""
    history_size: int
    history_ttl: float
    presence: bool
    join_leave: bool
    client_publish: bool
    ephemeral_topics: frozenset[str]
    max_members: int | None
    on_duplicate: DuplicatePolicy
    personal: bool
    tracked: bool = True
    """Whether the room keeps member entries: always with presence; without it, only where
    something needs them (`max_members`, or `reject`/`replace`, which must find a username).
    Entries of a room without presence are never shown: no member list, no presence frame."""

    @property
    def announces(self) -> bool:
        """Whether the room's members get `presence.join`/`presence.leave` frames."""
        return self.presence and self.join_leave

    def owner(self, room: str) -> str | None:
        """The one username a personal room admits (the ID after `<class>:`); None when
        the class is not personal."""
        return room[len(self.name) + 1 :] if self.personal else None


class RoomClasses:
    """The classes of one node, resolving room IDs to their settings.

    Args:
        classes: the configured classes by name.
        history_size: the default class's (`--history-size`).
        history_ttl: the default class's (`--history-ttl`).
        on_duplicate: the server's duplicate policy in force.

    Raises:
        ConfigError: a class name that cannot prefix a room ID.
    """

    __slots__ = ("_classes", "default")

    def __init__(
        self,
        classes: Mapping[str, RoomClass] | None = None,
        *,
        history_size: int = 100,
        history_ttl: float = 300.0,
        on_duplicate: DuplicatePolicy = "reject",
    ) -> None:
        self.default = ResolvedClass(
            name="",
            history_size=history_size,
            history_ttl=history_ttl,
            presence=True,
            join_leave=True,
            client_publish=True,
            ephemeral_topics=frozenset(),
            max_members=None,
            on_duplicate=on_duplicate,
            personal=False,
        )
        """The class of every room whose ID names no configured class."""
        self._classes: dict[str, ResolvedClass] = {}
        for name, cls in (classes or {}).items():
            check_class_name(name)
            policy = cls.on_duplicate or on_duplicate
            self._classes[name] = ResolvedClass(
                name=name,
                history_size=history_size if cls.history_size is None else cls.history_size,
                history_ttl=history_ttl if cls.history_ttl is None else float(cls.history_ttl),
                presence=cls.presence,
                join_leave=cls.join_leave,
                client_publish=cls.client_publish,
                ephemeral_topics=cls.ephemeral_topics,
                max_members=cls.max_members,
                on_duplicate=policy,
                personal=cls.personal,
                tracked=cls.presence or cls.max_members is not None or policy != "share",
            )

    def resolve(self, room: str) -> ResolvedClass:
        """The class `room` belongs to: the one its `<class>:` prefix names, else the default."""
        if self._classes:
            name, colon, _ = room.partition(":")
            if colon:
                found = self._classes.get(name)
                if found is not None:
                    return found
        return self.default

    @property
    def longest_ttl(self) -> float:
        """The longest `history_ttl` of any class (the default one included)."""
        return max(c.history_ttl for c in (self.default, *self._classes.values()))

    def __len__(self) -> int:
        return len(self._classes)


def check_class_name(name: object) -> str:
    """Check a class name: what may come before the `:` of a room ID.

    Raises:
        ConfigError: naming the rule it breaks.
    """
    try:
        name = validate_name(name, "a room class name")
    except FrameError as exc:
        raise ConfigError(f"{exc.message}, got {name!r}") from None
    if ":" in name:
        raise ConfigError(f"a room class name cannot contain ':', got {name!r}")
    return name


_FIELDS = {f.name for f in dataclasses.fields(RoomClass)}


def load_room_classes(path: str) -> dict[str, RoomClass]:
    """Read the room classes of a TOML file (`[rooms.<class>]` tables).

    Raises:
        ConfigError: the file cannot be read or is not valid TOML, or a class has an unknown
            setting or a bad value; the message names the file, the class and the setting.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text ({exc.reason})") from None
    unknown = sorted(set(document) - {"rooms"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level setting {unknown[0]!r} "
            "(the file holds room classes: [rooms.<class>] tables)"
        )
    rooms = document.get("rooms", {})
    if not isinstance(rooms, dict):
        raise ConfigError(f"{path}: rooms must be a table of classes ([rooms.<class>])")
    classes: dict[str, RoomClass] = {}
    for name, table in rooms.items():
        where = f"{path}: [rooms.{name}]"
        try:
            check_class_name(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {table!r}")
        classes[name] = _parse_class(where, table)
    return classes


def _parse_class(where: str, table: dict[str, Any]) -> RoomClass:
    for setting in table:
        if setting not in _FIELDS:
            raise ConfigError(
                f"{where} {setting}: unknown setting (known: {', '.join(sorted(_FIELDS))})"
            )
    values = dict(table)
    topics = values.get("ephemeral_topics")
    if topics is not None and not isinstance(topics, list):
        raise ConfigError(f"{where} ephemeral_topics: expected a list of topics, got {topics!r}")
    try:
        return RoomClass(**values)
    except _BadSetting as exc:
        raise ConfigError(f"{where} {exc.setting}: {exc.reason}") from None
