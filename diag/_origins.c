/* diag._origins: task ids and "created by" records, in C.
 *
 * The pure-Python path in diag/collect/task_origins.py does the same work with a
 * Python task factory, sys._getframe and an attribute set on each task.  Each of those
 * allocates: a frame object, a per-task __dict__, a tuple and its ints, and the cyclic
 * GC then runs more often; on a do-nothing coroutine that is a third more per
 * create_task.  Here the factory reads the creating code object and instruction offset
 * straight from the interpreter's frame chain (no frame objects) and keeps the record in
 * a table of plain C structs keyed by the task's address, so creating a task allocates
 * nothing beyond what asyncio itself allocates.
 *
 * Each entry holds a weak reference to its task (no callback: nothing runs when the
 * task dies).  An address can be reused by a new task before the old entry goes, so a
 * lookup counts only when the reference still points at the very task asked about.
 * The table is pruned, not told when tasks die: once it has doubled since the last
 * prune, entries whose task died are dropped, so it stays within a small multiple of
 * the number of live tasks.
 *
 * CPython's internal frame layout is read here, so the module is compiled against the
 * running interpreter's own headers and only for the layouts it knows (3.11 to 3.13,
 * with the GIL); anywhere else it exports nothing and diag uses the Python path.  Any
 * failure while recording is swallowed: the task is returned either way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DIAG_KNOWN_LAYOUT 1
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#endif
#include "internal/pycore_frame.h"
#if PY_VERSION_HEX < 0x030D0000
#define DIAG_FRAME_CODE(f) ((f)->f_code)
#else
#define DIAG_FRAME_CODE(f) ((PyCodeObject *)(f)->f_executable)
#endif
#endif

#ifdef DIAG_KNOWN_LAYOUT

/* ---- the table: task address -> record -------------------------------------------- */

typedef struct {
    uintptr_t task;       /* 0: empty slot */
    PyObject *ref;        /* weak reference to the task: tells a reused address apart */
    PyCodeObject *code;   /* creating code, kept alive by `codes`; NULL: id only */
    long long parent;     /* creating task's id, or -1 */
    long long seq;        /* the task's own id */
    int offset;           /* byte offset of the creating instruction */
} Entry;

static Entry *table = NULL;
static size_t capacity = 0;   /* a power of two, or 0 */
static size_t used = 0;
static size_t prune_at = 8192;
static long long next_seq = 1;

static PyObject *codes = NULL;       /* dict: id(code) -> code, shared with Python */

static size_t
slot_of(uintptr_t key)
{
    uintptr_t h = key >> 4;
    h ^= h >> 17;
    h *= (uintptr_t)0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 7) & (capacity - 1);
}

static Entry *
find(uintptr_t key)
{
    if (capacity == 0) {
        return NULL;
    }
    size_t i = slot_of(key);
    while (table[i].task != 0) {
        if (table[i].task == key) {
            return &table[i];
        }
        i = (i + 1) & (capacity - 1);
    }
    return NULL;
}

static PyObject *
referent(PyObject *ref)
{
    /* The object `ref` points to (borrowed), or Py_None once it died. */
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) <= 0) {
        PyErr_Clear();
        return Py_None;
    }
    Py_DECREF(obj);  /* the caller holds the task, or only compares addresses */
    return obj;
#else
    return PyWeakref_GET_OBJECT(ref);
#endif
}

static int
rehash(size_t new_capacity, int drop_dead)
{
    /* Move entries to a table of new_capacity, dropping those of dead tasks if asked. */
    Entry *old = table;
    size_t old_capacity = capacity;
    Entry *fresh = PyMem_Calloc(new_capacity, sizeof(Entry));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    table = fresh;
    capacity = new_capacity;
    used = 0;
    for (size_t j = 0; j < old_capacity; j++) {
        Entry *e = &old[j];
        if (e->task == 0) {
            continue;
        }
        if (drop_dead && referent(e->ref) == Py_None) {
            Py_DECREF(e->ref);
            continue;
        }
        size_t i = slot_of(e->task);
        while (table[i].task != 0) {
            i = (i + 1) & (capacity - 1);
        }
        table[i] = *e;
        used++;
    }
    PyMem_Free(old);
    return 0;
}

static void
prune(void)
{
    /* Drop the entries of dead tasks; called when the table doubled since last time.
     * Failure only means the table grows until the next attempt. */
    size_t live = 0;
    for (size_t j = 0; j < capacity; j++) {
        if (table[j].task != 0 && referent(table[j].ref) != Py_None) {
            live++;
        }
    }
    size_t want = 1024;
    while (want < 2 * (live + 1)) {
        want <<= 1;
    }
    if (want < capacity / 2 && used < capacity / 4) {
        want = capacity / 2;  /* shrink gradually */
    }
    else if (want < capacity) {
        want = capacity;
    }
    if (rehash(want, 1) < 0) {
        PyErr_Clear();
    }
    prune_at = used * 2 > 8192 ? used * 2 : 8192;
}

static Entry *
insert(uintptr_t key)
{
    /* The entry for `key`, new or reused; NULL with an exception on failure. */
    if (used + 1 > prune_at) {
        prune();
    }
    if ((used + 1) * 2 > capacity) {
        if (rehash(capacity ? capacity * 2 : 1024, 0) < 0) {
            return NULL;
        }
    }
    size_t i = slot_of(key);
    while (table[i].task != 0 && table[i].task != key) {
        i = (i + 1) & (capacity - 1);
    }
    if (table[i].task == 0) {
        used++;
    }
    else {
        Py_CLEAR(table[i].ref);  /* a dead task's entry at a reused address */
    }
    table[i].task = key;
    return &table[i];
}

/* The entry recorded for this very task, or NULL. */
static Entry *
lookup(PyObject *task)
{
    Entry *e = find((uintptr_t)task);
    return e != NULL && referent(e->ref) == task ? e : NULL;
}

static Entry *
claim(PyObject *task)
{
    /* A fresh entry for `task`; NULL with an exception on failure. */
    PyObject *ref = PyWeakref_NewRef(task, NULL);
    if (ref == NULL) {
        return NULL;
    }
    Entry *e = insert((uintptr_t)task);
    if (e == NULL) {
        Py_DECREF(ref);
        return NULL;
    }
    e->ref = ref;
    e->code = NULL;
    e->parent = -1;
    e->offset = 0;
    e->seq = next_seq++;
    return e;
}

static long long
seq_of(PyObject *task)
{
    /* The task's id, given now if it has none; -1 with an exception on failure. */
    Entry *e = lookup(task);
    if (e == NULL) {
        e = claim(task);
    }
    return e == NULL ? -1 : e->seq;
}

/* ---- which frame created the task ----------------------------------------------- */

/* Verdicts on code objects (does it live in asyncio's package?), cached by address; the
 * cache holds a reference, so an address is never reused while cached. */
#define VERDICTS 256
static struct { PyCodeObject *code; int skip; int stored; } verdicts[VERDICTS];
static PyObject *skip_prefix = NULL;

static int
is_asyncio_code(PyCodeObject *code)
{
    size_t i = ((uintptr_t)code >> 5) & (VERDICTS - 1);
    if (verdicts[i].code == code) {
        return verdicts[i].skip;
    }
    int skip = 0;
    PyObject *filename = code->co_filename;
    if (filename != NULL && PyUnicode_Check(filename) && skip_prefix != NULL) {
        Py_ssize_t m = PyUnicode_Tailmatch(filename, skip_prefix, 0, PY_SSIZE_T_MAX, -1);
        if (m < 0) {
            PyErr_Clear();
            m = 0;
        }
        skip = (int)m;
    }
    Py_XSETREF(verdicts[i].code, (PyCodeObject *)Py_NewRef(code));
    verdicts[i].skip = skip;
    verdicts[i].stored = 0;
    return skip;
}

static _PyInterpreterFrame *
current_frame(PyThreadState *ts)
{
#if PY_VERSION_HEX < 0x030D0000
    return ts->cframe ? ts->cframe->current_frame : NULL;
#else
    return ts->current_frame;
#endif
}

static int
not_python_code(_PyInterpreterFrame *f)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (f->owner == FRAME_OWNED_BY_CSTACK) {
        return 1;
    }
#endif
#if PY_VERSION_HEX >= 0x030D0000
    if (!PyCode_Check(f->f_executable)) {
        return 1;
    }
#endif
    return _PyFrame_IsIncomplete(f);
}

/* The innermost frame outside asyncio's own package: the code that asked for the task. */
static _PyInterpreterFrame *
creating_frame(void)
{
    _PyInterpreterFrame *f = current_frame(PyThreadState_Get());
    for (int depth = 0; f != NULL && depth < 64; depth++, f = f->previous) {
        if (!not_python_code(f) && !is_asyncio_code(DIAG_FRAME_CODE(f))) {
            return f;
        }
    }
    return NULL;
}

/* ---- the factory ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *inner;          /* the factory chained to, or None */
    PyObject *task_type;      /* asyncio.Task */
    PyObject *current_tasks;  /* asyncio.tasks._current_tasks: loop -> running task */
    PyObject *loop_kwnames;   /* ("loop",) */
    vectorcallfunc vectorcall;
} OriginFactory;

static int
remember_code(PyCodeObject *code)
{
    /* Keep the creating code object alive (and findable by id) for the records. */
    size_t i = ((uintptr_t)code >> 5) & (VERDICTS - 1);
    if (verdicts[i].code == code && verdicts[i].stored) {
        return 0;
    }
    PyObject *key = PyLong_FromVoidPtr((void *)code);
    if (key == NULL) {
        return -1;
    }
    int has = PyDict_Contains(codes, key);
    if (has == 0) {
        has = PyDict_SetItem(codes, key, (PyObject *)code) < 0 ? -1 : 1;
    }
    Py_DECREF(key);
    if (has < 0) {
        return -1;
    }
    if (verdicts[i].code == code) {
        verdicts[i].stored = 1;
    }
    return 0;
}

static int
record(OriginFactory *self, PyObject *task, PyObject *loop)
{
    _PyInterpreterFrame *f = creating_frame();
    PyCodeObject *code = f != NULL ? DIAG_FRAME_CODE(f) : NULL;
    int offset = f != NULL ? (int)(_PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT)) : 0;
    if (code != NULL && (codes == NULL || remember_code(code) < 0)) {
        return -1;
    }
    long long parent_seq = -1;
    PyObject *parent = PyDict_GetItemWithError(self->current_tasks, loop);  /* borrowed */
    if (parent != NULL) {
        Py_INCREF(parent);
        parent_seq = seq_of(parent);
        Py_DECREF(parent);
        if (parent_seq < 0) {
            return -1;
        }
    }
    else if (PyErr_Occurred()) {
        return -1;
    }
    /* An eager task may already have an id, given when its first step created children. */
    Entry *e = lookup(task);
    if (e == NULL && (e = claim(task)) == NULL) {
        return -1;
    }
    e->code = code;
    e->offset = offset;
    e->parent = parent_seq;
    return 0;
}

/* factory(loop, coro, **kwargs) */
static PyObject *
factory_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    OriginFactory *self = (OriginFactory *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "task factory takes (loop, coro), got %zd positional arguments", nargs);
        return NULL;
    }
    PyObject *loop = args[0];
    PyObject *task;
    if (self->inner != Py_None) {
        task = PyObject_Vectorcall(self->inner, args, nargsf, kwnames);
    }
    else {
        /* Task(coro, loop=loop, **kwargs) */
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        PyObject *small[8];
        PyObject **stack = small;
        PyObject *names = self->loop_kwnames;
        if (nkw > 0) {
            if (nkw + 2 > 8) {
                stack = PyMem_Malloc((size_t)(nkw + 2) * sizeof(PyObject *));
                if (stack == NULL) {
                    return PyErr_NoMemory();
                }
            }
            names = PyTuple_New(nkw + 1);
            if (names == NULL) {
                if (stack != small) {
                    PyMem_Free(stack);
                }
                return NULL;
            }
            PyTuple_SET_ITEM(names, 0, Py_NewRef(PyTuple_GET_ITEM(self->loop_kwnames, 0)));
            for (Py_ssize_t i = 0; i < nkw; i++) {
                PyTuple_SET_ITEM(names, i + 1, Py_NewRef(PyTuple_GET_ITEM(kwnames, i)));
                stack[i + 2] = args[2 + i];
            }
        }
        stack[0] = args[1];
        stack[1] = loop;
        task = PyObject_Vectorcall(self->task_type, stack, 1, names);
        if (nkw > 0) {
            Py_DECREF(names);
        }
        if (stack != small) {
            PyMem_Free(stack);
        }
    }
    if (task == NULL) {
        return NULL;
    }
    if (record(self, task, loop) < 0) {
        PyErr_Clear();  /* bookkeeping never breaks the program's create_task */
    }
    return task;
}

static PyObject *
factory_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"inner", "task_type", "current_tasks", NULL};
    PyObject *inner, *task_type, *current_tasks;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!:OriginFactory", kwlist, &inner,
                                     &task_type, &PyDict_Type, &current_tasks)) {
        return NULL;
    }
    OriginFactory *self = (OriginFactory *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->loop_kwnames = Py_BuildValue("(s)", "loop");
    if (self->loop_kwnames == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->inner = Py_NewRef(inner);
    self->task_type = Py_NewRef(task_type);
    self->current_tasks = Py_NewRef(current_tasks);
    self->vectorcall = factory_vectorcall;
    return (PyObject *)self;
}

static int
factory_traverse(OriginFactory *self, visitproc visit, void *arg)
{
    Py_VISIT(self->inner);
    Py_VISIT(self->task_type);
    Py_VISIT(self->current_tasks);
    return 0;
}

static int
factory_clear(OriginFactory *self)
{
    Py_CLEAR(self->inner);
    Py_CLEAR(self->task_type);
    Py_CLEAR(self->current_tasks);
    Py_CLEAR(self->loop_kwnames);
    return 0;
}

static void
factory_dealloc(OriginFactory *self)
{
    PyObject_GC_UnTrack(self);
    factory_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
factory_get_inner(OriginFactory *self, void *closure)
{
    (void)closure;
    return Py_NewRef(self->inner == NULL ? Py_None : self->inner);
}

static PyGetSetDef factory_getset[] = {
    {"inner", (getter)factory_get_inner, NULL, "the factory this one defers to, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject OriginFactoryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diag._origins.OriginFactory",
    .tp_basicsize = sizeof(OriginFactory),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "OriginFactory(inner, task_type, current_tasks): a task factory recording "
              "who created each task, then deferring to inner (or task_type when None).",
    .tp_new = factory_new,
    .tp_dealloc = (destructor)factory_dealloc,
    .tp_traverse = (traverseproc)factory_traverse,
    .tp_clear = (inquiry)factory_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(OriginFactory, vectorcall),
    .tp_getset = factory_getset,
};

/* ---- module functions ------------------------------------------------------------ */

static PyObject *
mod_configure(PyObject *mod, PyObject *args)
{
    PyObject *codes_arg, *prefix_arg;
    if (!PyArg_ParseTuple(args, "O!U:configure", &PyDict_Type, &codes_arg, &prefix_arg)) {
        return NULL;
    }
    Py_XSETREF(codes, Py_NewRef(codes_arg));
    Py_XSETREF(skip_prefix, Py_NewRef(prefix_arg));
    Py_RETURN_NONE;
}

static PyObject *
mod_task_seq(PyObject *mod, PyObject *task)
{
    long long seq = seq_of(task);
    return seq < 0 ? NULL : PyLong_FromLongLong(seq);
}

static PyObject *
mod_task_origin(PyObject *mod, PyObject *task)
{
    Entry *e = lookup(task);
    if (e == NULL || e->code == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *parent = e->parent < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(e->parent);
    if (parent == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NiNL)", PyLong_FromVoidPtr((void *)e->code), e->offset, parent, e->seq);
}

static PyObject *
mod_stats(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:n,s:n,s:L}", "entries", (Py_ssize_t)used, "capacity",
                         (Py_ssize_t)capacity, "prune_at", (Py_ssize_t)prune_at, "next_seq", next_seq);
}

static PyMethodDef mod_methods[] = {
    {"configure", mod_configure, METH_VARARGS,
     "configure(codes, asyncio_dir): where code objects are kept by id, and the directory "
     "whose frames are asyncio's own (skipped when looking for the creating code)."},
    {"task_seq", mod_task_seq, METH_O, "task_seq(task) -> the task's diag id (given now if new)."},
    {"task_origin", mod_task_origin, METH_O,
     "task_origin(task) -> (id(code), offset, creator id or None, id), or None."},
    {"stats", mod_stats, METH_NOARGS, "stats() -> the record table's size, for tests and benchmarks."},
    {NULL, NULL, 0, NULL},
};

#else
static PyMethodDef mod_methods[] = {{NULL, NULL, 0, NULL}};
#endif /* DIAG_KNOWN_LAYOUT */

static struct PyModuleDef origins_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "diag._origins",
    .m_doc = "Task ids and \"created by\" records in C (an optional accelerator).",
    .m_size = -1,
    .m_methods = mod_methods,
};

PyMODINIT_FUNC
PyInit__origins(void)
{
    PyObject *m = PyModule_Create(&origins_module);
    if (m == NULL) {
        return NULL;
    }
#ifdef DIAG_KNOWN_LAYOUT
    if (PyType_Ready(&OriginFactoryType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&OriginFactoryType);
    if (PyModule_AddObject(m, "OriginFactory", (PyObject *)&OriginFactoryType) < 0) {
        Py_DECREF(&OriginFactoryType);
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
