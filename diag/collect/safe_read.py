"""Read the target's objects without running their code.

A dump must not call a program's ``__repr__``, ``__str__``, ``__eq__``, ``__hash__``,
``__getattribute__`` or ``__class__``: any of them may raise, block for an hour or
return ten megabytes.  ``isinstance`` itself asks an object for its ``__class__``
when the type test fails, so the collectors test ``type(obj)`` instead, read instance
dicts through the type's own descriptor, and turn only plain builtin values into text.

Usage::

    if is_a(obj, asyncio.Lock):
        attrs = instance_dict(owner) or {}
        label = clip(name, 60)
"""

from __future__ import annotations

import types
from typing import Any, TypeGuard, TypeVar, cast, overload

_PLAIN = (int, float, bool, type(None), bytes)
T = TypeVar("T")


@overload
def is_a(obj: object, cls: type[T]) -> TypeGuard[T]: ...


@overload
def is_a(obj: object, cls: tuple[type, ...]) -> bool: ...


def is_a(obj: object, cls: type | tuple[type, ...]) -> bool:
    """``isinstance`` by the object's real type: no ``__class__`` lookup on the object."""
    return issubclass(type(obj), cls)


def instance_dict(obj: object) -> dict[str, Any] | None:
    """``obj.__dict__`` read through its type's slot descriptor, or None (no dict, or the
    class defines ``__dict__`` itself: that would be the program's code)."""
    try:
        for klass in type(obj).__mro__:
            attr = klass.__dict__.get("__dict__")
            if attr is None:
                continue
            if type(attr) not in (types.GetSetDescriptorType, types.MemberDescriptorType):  # modules: a member
                return None
            value = attr.__get__(obj, type(obj))
            return value if type(value) is dict else None
    except Exception:
        return None
    return None


def plain_attr(obj: object, name: str) -> object:
    """An attribute kept in the object itself (a slot or its instance dict), or None; no
    property, ``__getattr__`` or ``__getattribute__`` of the object runs."""
    try:
        for klass in type(obj).__mro__:
            attr = klass.__dict__.get(name)
            if attr is not None:
                return attr.__get__(obj, klass) if type(attr) is types.MemberDescriptorType else None
        attrs = instance_dict(obj)
        return None if attrs is None else attrs.get(name)
    except Exception:
        return None


def clip(value: object, limit: int = 200) -> str:
    """A short, exact ``str`` for a name or label: strings (subclasses too, without their
    methods) cut to ``limit``; plain builtin values formatted; anything else its type."""
    if type(value) is str:
        text: str = value  # type: ignore[assignment]
    elif issubclass(type(value), str):  # a str subclass: copy the characters, skip its methods
        text = str.__getitem__(cast(str, value), slice(0, limit + 1))
    elif type(value) in _PLAIN:
        try:
            text = repr(value) if type(value) is bytes else str(value)
        except ValueError:  # an int too long to print
            text = f"<{type(value).__name__}>"
    else:
        return f"<{type_name(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(value: object, limit: int = 80) -> str:
    """A dict key as code would write it (``'name'``, ``42``), or ``<Type>`` for objects."""
    if type(value) is str:
        text = repr(value[: limit + 1])  # type: ignore[index]
        return text if len(text) <= limit else text[: limit - 4] + "...'"
    return clip(value, limit)


def type_name(obj: object) -> str:
    """The object's class name, read from the class (the object is not asked)."""
    return str(type(obj).__qualname__)
