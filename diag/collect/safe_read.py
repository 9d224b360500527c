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

import asyncio
import collections
import gc
import types
from typing import Any, TypeGuard, TypeVar, cast, overload

_PLAIN = (int, float, bool, type(None), bytes)
T = TypeVar("T")
_MISSING: Any = object()
#: A class's own namespace and MRO, read through ``type``'s descriptors: a metaclass
#: that defines ``__dict__`` or ``__mro__`` is not asked.
_class_dict = type.__dict__["__dict__"].__get__
_class_mro = type.__dict__["__mro__"].__get__
_class_qualname = type.__dict__["__qualname__"].__get__
_generic_getattr = object.__getattribute__
#: Descriptors that read a field and run no Python code: slots and C getters.
_FIELD_DESCRIPTORS = (types.MemberDescriptorType, types.GetSetDescriptorType)
#: Class attributes that are values, not descriptors (an instance's own value wins).
_CLASS_VALUES = frozenset({int, float, bool, type(None), str, bytes, tuple, frozenset})
_PENDING = "PENDING"
#: asyncio's C Future and Task, whose fields and methods are read through their own
#: descriptors whatever a subclass overrides (None without the C module).
_C_FUTURE: Any = getattr(asyncio.futures, "_CFuture", None)
_C_TASK: Any = getattr(asyncio.tasks, "_CTask", None)


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
        for klass in _class_mro(type(obj)):
            attr = _class_dict(klass).get("__dict__")
            if attr is None:
                continue
            if type(attr) not in (types.GetSetDescriptorType, types.MemberDescriptorType):  # modules: a member
                return None
            value = attr.__get__(obj, type(obj))
            return value if type(value) is dict else None
    except Exception:
        return None
    return None


def class_attr(kind: type, name: str) -> object:
    """``name`` as ``kind``'s MRO defines it (read from the class namespaces), or ``MISSING``."""
    for klass in _class_mro(kind):
        namespace = _class_dict(klass)
        value = namespace.get(name, _MISSING) if type(name) is str else _MISSING
        if value is not _MISSING:
            return value
    return _MISSING


MISSING = _MISSING


def read_attr(obj: object, name: str, default: Any = None) -> Any:
    """``obj.name`` as ``object.__getattribute__`` would find it, read without running the
    program's code: a slot or a C field through its descriptor, else the instance's own
    value (``object.__getattribute__`` itself once the class is known to define no
    descriptor of that name: it never calls ``__getattr__``), else a plain value on the
    class.  A property, ``__getattr__`` or ``__getattribute__`` of the program never runs:
    such an attribute reads as ``default``."""
    try:
        kind = type(obj)
        attr = class_attr(kind, name)
        if type(attr) in _FIELD_DESCRIPTORS:
            return attr.__get__(obj, kind)  # type: ignore[attr-defined]
        if attr is not _MISSING and type(attr) not in _CLASS_VALUES and type(attr) is not types.FunctionType:
            return default  # a property or another descriptor: code of the program
        try:
            value = _generic_getattr(obj, name)
        except AttributeError:
            return default
        if attr is not _MISSING and type(attr) is types.FunctionType and type(value) is types.MethodType:
            return default  # a method, not a value
        return value
    except Exception:
        return default


#: (id of a type, field) -> (the type, asyncio's C descriptor for the field and the C base it
#: belongs to, or None for a field read with ``read_attr``): a dump reads five fields of
#: every task.  Keyed by id, never by the type (a metaclass's ``__hash__`` is the program's
#: code), and checked against the type kept.
_FIELD_READERS: dict[tuple[int, str], tuple[type, tuple[Any, type] | None]] = {}
#: Entries kept at most (a program making Future subclasses on the fly cannot grow it).
_MAX_FIELD_READERS = 1024


#: (asyncio's C Task or Future type, field name) -> its descriptor's getter.
_EXACT_GETTERS: dict[tuple[type, str], Any] = {}


def _field_reader(kind: type, name: str) -> tuple[Any, type] | None:
    for base in (_C_TASK, _C_FUTURE):
        if base is not None and issubclass(kind, base):
            descriptor = _class_dict(base).get(name)
            if type(descriptor) is types.GetSetDescriptorType:
                return descriptor, base
    return None


def future_field(fut: object, name: str, default: Any = None) -> Any:
    """A field of an asyncio Future or Task (``_state``, ``_loop``, ``_fut_waiter``,
    ``_callbacks``, ``_coro``...) through asyncio's own descriptor when the object is a C
    future, whatever its subclass defines; ``read_attr`` for the pure-Python ones."""
    kind = type(fut)
    if kind is _C_TASK or kind is _C_FUTURE:  # asyncio's own, most of a dump: one look-up
        getter = _EXACT_GETTERS.get((kind, name))
        if getter is not None:
            try:
                return getter(fut)
            except Exception:
                return default
    key = (id(kind), name)
    entry = _FIELD_READERS.get(key)
    if entry is not None and entry[0] is kind:
        reader = entry[1]
    else:
        reader = _field_reader(kind, name)
        if len(_FIELD_READERS) < _MAX_FIELD_READERS:
            _FIELD_READERS[key] = (kind, reader)
            if reader is not None and (kind is _C_TASK or kind is _C_FUTURE):
                _EXACT_GETTERS[(kind, name)] = reader[0].__get__
    if reader is not None:
        try:
            return reader[0].__get__(fut, reader[1])
        except Exception:
            return default
    return read_attr(fut, name, default)


def future_done(fut: object) -> bool:
    """``fut.done()`` read from its state, not asked (an unreadable one counts as done)."""
    return bool(future_field(fut, "_state") != _PENDING)


def task_name(task: object) -> object:
    """``task.get_name()`` of asyncio's own Task, not a subclass's override."""
    if _C_TASK is not None and issubclass(type(task), _C_TASK):
        try:
            return _C_TASK.get_name(task)
        except Exception:
            return None
    return read_attr(task, "_name")


def task_cancelling(task: object) -> int:
    """``task.cancelling()`` of asyncio's own Task (0 when unreadable)."""
    try:
        if _C_TASK is not None and issubclass(type(task), _C_TASK):
            value = _C_TASK.cancelling(task)
        else:
            value = read_attr(task, "_num_cancels_requested", 0)
        return value if type(value) is int else 0
    except Exception:
        return 0


def builtin_len(obj: object) -> int | None:
    """The length of a builtin container (exact type: no ``__len__`` of the program runs)."""
    kind = type(obj)
    if kind in (list, tuple, dict, set, frozenset, collections.deque):
        return len(obj)  # type: ignore[arg-type]
    return None


def builtin_items(obj: object) -> list[Any]:
    """The items of a builtin list, tuple, set, frozenset or deque (exact types), else []."""
    if type(obj) in (list, tuple, set, frozenset, collections.deque):
        try:
            items: list[Any] = list(obj)  # type: ignore[call-overload]
            return items
        except RuntimeError:  # changed size during the copy (another thread)
            return []
    return []


def plain_attr(obj: object, name: str) -> object:
    """An attribute kept in the object itself (a slot or its instance dict), or None; no
    property, ``__getattr__`` or ``__getattribute__`` of the object runs."""
    try:
        for klass in _class_mro(type(obj)):
            attr = _class_dict(klass).get(name)
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
    """The object's class name, read from the class (neither the object nor a metaclass
    is asked)."""
    return str(_class_qualname(type(obj)))


def _coroutine_wrapper_type() -> type:
    async def coro() -> None:
        return None
    made = coro()
    found = type(made.__await__())
    made.close()
    return found


#: What ``coro.__await__()`` returns: awaitables whose ``__await__`` hands on a
#: coroutine's (aiohttp's ``session.get``, asyncpg's ``pool.acquire``) put one in an
#: await chain.  It shows its coroutine only to the GC.
COROUTINE_WRAPPER = _coroutine_wrapper_type()


def wrapped_coroutine(wrapper: object) -> object:
    """The coroutine behind a ``COROUTINE_WRAPPER`` (None if it has gone)."""
    return next((ref for ref in gc.get_referents(wrapper) if type(ref) is types.CoroutineType), None)


def task_coroutine(coro: object) -> object:
    """What a task runs: its coroutine, or the coroutine a library's coroutine-like object
    keeps in a ``_coro`` field and hands every step on to (aiohttp's ``session.get(...)``
    made a task by ``gather`` or ``create_task``)."""
    if type(coro) in (types.CoroutineType, types.GeneratorType):
        return coro
    inner = plain_attr(coro, "_coro")
    return inner if type(inner) is types.CoroutineType else coro
