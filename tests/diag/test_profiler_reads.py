"""What the yappi reader finds without reading files: a function's kind from its code
object, yappi's version from its dist-info.  On a loop thread that turns through
``select(0)`` without pause, every file read of another thread waits long for the GIL
back, so the profile answer avoids them."""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from diag.collect import profiler


def _module() -> types.ModuleType:
    def wraps(fn: Any) -> Any:
        @functools.wraps(fn)
        def inner(*args: Any) -> Any:
            return fn(*args)
        return inner

    module = types.ModuleType("profiled_app")
    module.__file__ = "/nonexistent/profiled_app.py"  # linecache cannot read it: the code object must answer
    module.__dict__["wraps"] = wraps
    exec(compile(SOURCE, module.__file__, "exec"), module.__dict__)
    return module


SOURCE = '''
async def fetch():
    pass

def plain():
    pass

class Client:
    async def call(self):
        pass

    def close(self):
        pass

    @staticmethod
    async def build():
        pass

    @classmethod
    def make(cls):
        pass

    @wraps
    async def wrapped(self):
        pass
'''


@pytest.mark.parametrize(("qualname", "expected"), [
    ("fetch", True), ("plain", False), ("Client.call", True), ("Client.close", False),
    ("Client.build", True), ("Client.make", False), ("Client.wrapped", True),
])
def test_a_function_s_kind_comes_from_its_code_object(qualname: str, expected: bool) -> None:
    module = _module()
    function: Any = module.__dict__[qualname.split(".")[0]]
    if "." in qualname:
        function = vars(function)[qualname.split(".")[1]]
    function = getattr(function, "__func__", function)
    function = getattr(function, "__wrapped__", function)
    line = function.__code__.co_firstlineno  # yappi's line: the first decorator's, if any
    codes = profiler._module_codes(module)
    assert codes[line] is function.__code__
    assert profiler._is_coroutine(module.__file__, line, {}, codes) is expected


def test_a_method_is_found_by_its_line_whatever_class_yappi_names() -> None:
    # yappi names a method after the class of the instance (``_UnixSelectorEventLoop.run_forever``
    # for a method of BaseEventLoop): the line in the defining module is what finds it.
    import asyncio.base_events as base_events
    codes = profiler._module_codes(base_events)
    run_forever = base_events.BaseEventLoop.run_forever.__code__
    assert codes[run_forever.co_firstlineno] is run_forever
    by_file = profiler._modules_by_file()
    assert by_file[base_events.__file__] is base_events


def test_a_line_it_cannot_resolve_falls_back_to_the_source(tmp_path: Path) -> None:
    source = tmp_path / "app.py"
    source.write_text("import functools\n\n@functools.cache\nasync def nested():\n    pass\n")
    assert profiler._is_coroutine(str(source), 3, {}, {}) is True
    assert profiler._is_coroutine(str(source), 3, {}, None) is True
    module = _module()
    assert profiler._is_coroutine(module.__file__, 999, {}, profiler._module_codes(module)) is False


def test_no_attribute_hook_of_the_program_runs_while_resolving() -> None:
    calls = []

    class Loud(type):
        def __getattribute__(cls, name: str) -> Any:
            calls.append(name)
            return super().__getattribute__(name)

    class Service(metaclass=Loud):
        async def run(self) -> None:
            pass

    module = types.ModuleType("loud_app")
    module.__file__ = __file__
    module.__dict__["Service"] = Service
    line = vars(Service)["run"].__code__.co_firstlineno
    calls.clear()
    codes = profiler._module_codes(module)
    assert codes[line].co_name == "run"
    assert calls == []


def test_yappi_s_version_is_read_from_its_dist_info(tmp_path: Path) -> None:
    (tmp_path / "yappi-1.7.7.dist-info").mkdir()
    (tmp_path / "yappi.py").write_text("")
    assert profiler._yappi_release(str(tmp_path / "yappi.py")) == (1, 7, 7)
    yappi = pytest.importorskip("yappi")
    from importlib.metadata import version
    installed = tuple(int(p) for p in version("yappi").split(".")[:3] if p.isdigit())
    assert profiler._yappi_release(yappi.__file__) == installed
    assert profiler.yappi_keeps_coroutines(yappi) is (sys.version_info >= (3, 11) and installed <= profiler.LAST_LEAKING_YAPPI)
