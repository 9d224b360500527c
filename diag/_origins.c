/* diag._origins: the hot paths of diag's bookkeeping, in C.
 *
 * Five jobs, each with a pure-Python twin that gives the same answers (or, for the last,
 * the best answer Python can give):
 * - task ids and "created by" records (the task factory; diag/collect/task_origins.py);
 * - who holds which Lock or Semaphore permit (the acquire and release wrappers;
 *   diag/collect/holders.py);
 * - reading a task's await chain for the dump (diag/collect/task_collector.py);
 * - the reachability proof's marking (diag/collect/reachability.py);
 * - the watchdog's sleep, which has the main thread read its own stack as a long call
 *   holding the GIL returns (diag/collect/loop_watch.py).
 * Each section below says what the Python twin costs that this one does not.
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
 * with the GIL); anywhere else it exports nothing and diag uses the Python paths.  Any
 * failure while recording is swallowed: the task is returned, the permit taken, either
 * way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <errno.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define DIAG_KNOWN_LAYOUT 1
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#endif
#include "internal/pycore_frame.h"
#if PY_VERSION_HEX >= 0x030D0000
#include "internal/pycore_genobject.h"
#endif
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
static PyObject *skip_file = NULL;  /* diag's holder wrappers: passed over like asyncio */
static PyObject *skip_origins_file = NULL;  /* diag's create_task wrapper (task_origins.py): the same */

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
        if (!skip && skip_file != NULL) {
            int cmp = PyUnicode_Compare(filename, skip_file);
            if (cmp == -1 && PyErr_Occurred()) {
                PyErr_Clear();
            }
            skip = cmp == 0;
        }
        if (!skip && skip_origins_file != NULL) {
            int cmp = PyUnicode_Compare(filename, skip_origins_file);
            if (cmp == -1 && PyErr_Occurred()) {
                PyErr_Clear();
            }
            skip = cmp == 0;
        }
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

/* ---- who holds a Lock or Semaphore permit ------------------------------------------
 *
 * The wrappers below replace asyncio's Lock and Semaphore acquire and release; after
 * each acquire or release they call note_acquired or note_released here.  Each
 * primitive gets one list in a plain attribute, read and written by the generic
 * machinery (no __getattr__ or __setattr__ of the program's runs): item 0 is the
 * time.monotonic() of the last acquire or release, then one record per permit held,
 * oldest first.  A record is the tuple (holding task's id or None, site, since): site
 * holds up to SITE_DEPTH (code, offset) pairs of the acquiring coroutines, innermost
 * first, read from the frame chain without making frame objects.  A program acquires at
 * a handful of places, so site tuples are cached by their pairs and shared, and a
 * record costs one tuple.  The layout is holders.py's; so is SITE_DEPTH.
 */

#define SITE_DEPTH 3
#define SITE_CACHE 64
#define ASYNC_CODE_FLAGS (CO_COROUTINE | CO_ASYNC_GENERATOR | CO_ITERABLE_COROUTINE)

static PyObject *get_running_loop = NULL;  /* asyncio.events._get_running_loop */
static PyObject *loop_tasks = NULL;        /* asyncio.tasks._current_tasks */
static PyObject *held_attr = NULL;         /* name of the attribute holding the list */
static PyObject *handoff_attr = NULL;      /* name of the attribute: time of the last handed-off release */

typedef struct {
    PyCodeObject *code[SITE_DEPTH];  /* borrowed: `site` holds them */
    int offset[SITE_DEPTH];
    int n;
    PyObject *site;                  /* the shared tuple, or NULL */
} SiteSlot;

static SiteSlot sites[SITE_CACHE];

static PyObject *
running_task_seq(void)
{
    /* The running task's diag id as an int, or None; NULL with an exception on failure. */
    if (get_running_loop == NULL || loop_tasks == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *loop = PyObject_CallNoArgs(get_running_loop);
    if (loop == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *task = PyDict_GetItemWithError(loop_tasks, loop);  /* borrowed */
    Py_DECREF(loop);
    if (task == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_INCREF(task);
    long long seq = seq_of(task);
    Py_DECREF(task);
    return seq < 0 ? NULL : PyLong_FromLongLong(seq);
}

static PyObject *
monotonic_now(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_Monotonic(&t) < 0) {
        return NULL;
    }
    return PyFloat_FromDouble(PyTime_AsSecondsDouble(t));
#else
    return PyFloat_FromDouble(_PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock()));
#endif
}

static PyObject *
acquire_site(void)
{
    /* The acquiring coroutines, innermost first (new reference): frames of asyncio and of
     * diag's wrappers are passed over, and the walk ends at the first frame that is not a
     * coroutine's (the loop's own machinery). */
    PyCodeObject *code[SITE_DEPTH];
    int offset[SITE_DEPTH];
    int n = 0;
    uint64_t h = 0;
    _PyInterpreterFrame *f = current_frame(PyThreadState_Get());
    for (int depth = 0; f != NULL && depth < 64 && n < SITE_DEPTH; depth++, f = f->previous) {
        if (not_python_code(f)) {
            continue;
        }
        PyCodeObject *c = DIAG_FRAME_CODE(f);
        if (is_asyncio_code(c)) {
            continue;
        }
        if (!(c->co_flags & ASYNC_CODE_FLAGS)) {
            break;
        }
        code[n] = c;
        offset[n] = (int)(_PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT));
        h = (h ^ ((uint64_t)(uintptr_t)c >> 4) ^ (uint64_t)offset[n]) * 0x9E3779B97F4A7C15ull;
        n++;
    }
    SiteSlot *slot = &sites[(size_t)(h >> 32) & (SITE_CACHE - 1)];
    if (slot->site != NULL && slot->n == n) {
        int same = 1;
        for (int i = 0; i < n && same; i++) {
            same = slot->code[i] == code[i] && slot->offset[i] == offset[i];
        }
        if (same) {
            return Py_NewRef(slot->site);
        }
    }
    PyObject *site = PyTuple_New(n);
    if (site == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *off = PyLong_FromLong(offset[i]);
        PyObject *pair = off == NULL ? NULL : PyTuple_Pack(2, (PyObject *)code[i], off);
        Py_XDECREF(off);
        if (pair == NULL) {
            Py_DECREF(site);
            return NULL;
        }
        PyTuple_SET_ITEM(site, i, pair);
    }
    Py_XSETREF(slot->site, Py_NewRef(site));
    for (int i = 0; i < n; i++) {
        slot->code[i] = code[i];
        slot->offset[i] = offset[i];
    }
    slot->n = n;
    return site;
}

static PyObject *
held_list(PyObject *primitive, PyObject *now, int create)
{
    /* The primitive's list with item 0 set to `now` (a new reference), created if asked;
     * NULL with no error when there is none, NULL with an error on failure.  It is read
     * and set as a plain attribute: asking for __dict__ would make the object trade its
     * inline attribute values for a real dict, and every attribute access asyncio makes
     * on it would then be slower. */
    PyObject *held = PyObject_GenericGetAttr(primitive, held_attr);
    if (held == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        if (!create) {
            return NULL;
        }
        held = PyList_New(1);
        if (held == NULL) {
            return NULL;
        }
        PyList_SET_ITEM(held, 0, Py_NewRef(now));
        if (PyObject_GenericSetAttr(primitive, held_attr, held) < 0) {
            Py_CLEAR(held);
        }
        return held;
    }
    if (!PyList_Check(held) || PyList_GET_SIZE(held) == 0) {
        Py_DECREF(held);
        return NULL;
    }
    PyObject *old = PyList_GET_ITEM(held, 0);
    PyList_SET_ITEM(held, 0, Py_NewRef(now));
    Py_DECREF(old);
    return held;
}

static int
note_acquired(PyObject *primitive, int with_site)
{
    /* with_site 0: the frames running now are not the acquirer's (see acquiring_throw),
     * so the record names no site. */
    if (held_attr == NULL) {
        return 0;  /* not configured: nothing to record into */
    }
    int rc = -1;
    PyObject *seq = NULL, *site = NULL, *entry = NULL;
    PyObject *now = monotonic_now();
    if (now == NULL) {
        return -1;
    }
    PyObject *held = held_list(primitive, now, 1);
    if (held != NULL && (seq = running_task_seq()) != NULL
            && (site = with_site ? acquire_site() : PyTuple_New(0)) != NULL
            && (entry = PyTuple_Pack(3, seq, site, now)) != NULL) {
        rc = PyList_Append(held, entry);
    }
    Py_XDECREF(entry);
    Py_XDECREF(site);
    Py_XDECREF(seq);
    Py_XDECREF(held);
    Py_DECREF(now);
    return rc;
}

static int
mark_handoff(PyObject *primitive, PyObject *now)
{
    /* A release by other code than the acquirer's (another task, a callback): the
     * primitive's permits are handed on by design, so a holder that ended without
     * releasing may not have lost its permit. */
    return handoff_attr == NULL ? 0 : PyObject_GenericSetAttr(primitive, handoff_attr, now);
}

static int
note_released(PyObject *primitive)
{
    /* Drop the releasing task's record, or the oldest when the permit is released on its
     * holder's behalf (then marked as handed off, unless the oldest was acquired by a
     * task running the acquire itself: wait_for's inner task on 3.11). */
    if (held_attr == NULL) {
        return 0;
    }
    PyObject *now = monotonic_now();
    if (now == NULL) {
        return -1;
    }
    PyObject *held = held_list(primitive, now, 0);
    if (held == NULL || PyList_GET_SIZE(held) < 2) {
        /* a release with no permit recorded as held: handed on, or taken before diag came */
        int failed = held == NULL && PyErr_Occurred();
        Py_XDECREF(held);
        int rc = failed ? -1 : mark_handoff(primitive, now);
        Py_DECREF(now);
        return rc;
    }
    PyObject *seq = running_task_seq();
    if (seq == NULL) {
        Py_DECREF(held);
        Py_DECREF(now);
        return PyErr_Occurred() ? -1 : 0;
    }
    /* The size is read as the list is now: finding the task's id may have run a
     * collection, and with it finalizers that changed the list. */
    Py_ssize_t found = 0;
    int own = 0;
    for (Py_ssize_t i = 1; i < PyList_GET_SIZE(held); i++) {
        PyObject *entry = PyList_GET_ITEM(held, i);
        if (found == 0) {
            found = i;  /* the oldest, unless the task's own record is found */
        }
        if (PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) > 0) {
            PyObject *owner = PyTuple_GET_ITEM(entry, 0);
            if (owner == seq || (PyLong_CheckExact(owner) && PyLong_CheckExact(seq)
                                 && PyObject_RichCompareBool(owner, seq, Py_EQ) == 1)) {
                found = i;
                own = 1;
                break;
            }
        }
    }
    int handed = 0;
    if (found > 0 && !own) {
        /* the oldest record's site: empty when its task ran the acquire itself */
        PyObject *entry = PyList_GET_ITEM(held, found);
        handed = !(PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) > 1
                   && PyTuple_Check(PyTuple_GET_ITEM(entry, 1)) && PyTuple_GET_SIZE(PyTuple_GET_ITEM(entry, 1)) == 0);
    }
    int rc = found > 0 ? PyList_SetSlice(held, found, found + 1, NULL) : 0;
    if (rc == 0 && handed) {
        rc = mark_handoff(primitive, now);
    }
    Py_DECREF(seq);
    Py_DECREF(held);
    Py_DECREF(now);
    return rc;
}

static PyObject *
mod_configure_holders(PyObject *mod, PyObject *args)
{
    PyObject *get_loop, *tasks, *held_name, *wrappers_file;
    if (!PyArg_ParseTuple(args, "OO!UU:configure_holders", &get_loop, &PyDict_Type, &tasks,
                          &held_name, &wrappers_file)) {
        return NULL;
    }
    Py_XSETREF(skip_file, Py_NewRef(wrappers_file));
    for (int i = 0; i < VERDICTS; i++) {  /* verdicts made before knew nothing of that file */
        Py_CLEAR(verdicts[i].code);
    }
    Py_XSETREF(get_running_loop, Py_NewRef(get_loop));
    Py_XSETREF(loop_tasks, Py_NewRef(tasks));
    Py_XSETREF(held_attr, Py_NewRef(held_name));
    PyObject *handoff = PyUnicode_FromFormat("%U_handoff", held_name);
    if (handoff == NULL) {
        return NULL;
    }
    Py_XSETREF(handoff_attr, handoff);
    Py_RETURN_NONE;
}

/* ---- the wrappers: asyncio's acquire and release, recorded ---------------------------
 *
 * HeldMethod replaces Lock.acquire, Lock.release, Semaphore.acquire and
 * Semaphore.release on their classes.  A release calls asyncio's release, then
 * note_released.  An acquire calls asyncio's acquire and hands back an Acquiring: an
 * awaitable that drives asyncio's coroutine and calls note_acquired when it returns.
 * Done in Python, the same takes a wrapper coroutine and a frame per acquire, which
 * cost more than the recording itself.
 */

static PyObject *acquire_observer = NULL;  /* called with each acquired primitive, or NULL */

static int
swallowed(void)
{
    /* Bookkeeping never breaks the program's acquire or release: an Exception raised by
     * it is dropped.  KeyboardInterrupt and SystemExit go on, as from the Python path. */
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

static int
acquired(PyObject *primitive, int with_site)
{
    /* Record the acquire; -1 with an exception only for one that must not be dropped. */
    if (note_acquired(primitive, with_site) < 0 && !swallowed()) {
        return -1;
    }
    if (acquire_observer != NULL) {
        PyObject *observer = Py_NewRef(acquire_observer);  /* it may unset itself */
        PyObject *r = PyObject_CallOneArg(observer, primitive);
        Py_DECREF(observer);
        if (r == NULL && !swallowed()) {
            return -1;
        }
        Py_XDECREF(r);
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    PyObject *inner;      /* asyncio's acquire() coroutine */
    PyObject *primitive;  /* the Lock or Semaphore */
} Acquiring;

static PyTypeObject AcquiringType;

static PySendResult
acquiring_am_send(Acquiring *self, PyObject *arg, PyObject **result)
{
    if (self->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an acquire() awaitable");
        *result = NULL;
        return PYGEN_ERROR;
    }
    PySendResult r = PyIter_Send(self->inner, arg, result);
    if (r == PYGEN_RETURN && acquired(self->primitive, 1) < 0) {
        Py_CLEAR(*result);
        return PYGEN_ERROR;
    }
    return r;
}

static PyObject *
acquiring_send(Acquiring *self, PyObject *arg)
{
    PyObject *result;
    PySendResult r = acquiring_am_send(self, arg, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        if (result != Py_None) {
            _PyGen_SetStopIterationValue(result);
        }
        else {
            PyErr_SetNone(PyExc_StopIteration);
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
acquiring_iternext(Acquiring *self)
{
    PyObject *result;
    PySendResult r = acquiring_am_send(self, Py_None, &result);
    if (r == PYGEN_NEXT) {
        return result;
    }
    if (r == PYGEN_RETURN) {
        if (result != Py_None) {
            _PyGen_SetStopIterationValue(result);
        }
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
acquiring_throw(Acquiring *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (self->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an acquire() awaitable");
        return NULL;
    }
    PyObject *meth = PyObject_GetAttrString(self->inner, "throw");
    if (meth == NULL) {
        return NULL;
    }
    if (nargs >= 2 && PyExceptionInstance_Check(args[1])) {
        /* throw(type, value[, tb]): pass the exception alone, as a coroutine delegating
         * to another would (the three-argument form is deprecated from 3.12) */
        if (nargs == 3 && args[2] != Py_None && PyException_SetTraceback(args[1], args[2]) < 0) {
            Py_DECREF(meth);
            return NULL;
        }
        args = &args[1];
        nargs = 1;
    }
    PyObject *result = PyObject_Vectorcall(meth, args, (size_t)nargs, NULL);
    Py_DECREF(meth);
    if (result == NULL && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        /* asyncio's acquire finished in spite of the exception: the permit is held.  The
         * frames running now are the thrower's, not the acquirer's: no site. */
        PyObject *value = NULL;
        if (_PyGen_FetchStopIterationValue(&value) == 0) {
            if (acquired(self->primitive, 0) < 0) {
                Py_DECREF(value);
                return NULL;
            }
            if (value != Py_None) {
                _PyGen_SetStopIterationValue(value);
            }
            else {
                PyErr_SetNone(PyExc_StopIteration);
            }
            Py_DECREF(value);
        }
    }
    return result;
}

static PyObject *
acquiring_close(Acquiring *self, PyObject *unused)
{
    if (self->inner == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethod(self->inner, "close", NULL);
}

static PyObject *
acquiring_await(Acquiring *self)
{
    return Py_NewRef(self);
}

static PyObject *
acquiring_get_inner(Acquiring *self, void *closure)
{
    return Py_NewRef(self->inner != NULL ? self->inner : Py_None);
}

static PyObject *
acquiring_get_qualname(Acquiring *self, void *closure)
{
    if (self->inner == NULL) {
        return PyUnicode_FromString("acquire");
    }
    return PyObject_GetAttrString(self->inner, "__qualname__");
}

static int
acquiring_traverse(Acquiring *self, visitproc visit, void *arg)
{
    Py_VISIT(self->inner);
    Py_VISIT(self->primitive);
    return 0;
}

static int
acquiring_clear(Acquiring *self)
{
    Py_CLEAR(self->inner);
    Py_CLEAR(self->primitive);
    return 0;
}

static void
acquiring_dealloc(Acquiring *self)
{
    PyObject_GC_UnTrack(self);
    acquiring_clear(self);
    PyObject_GC_Del(self);
}

static PyAsyncMethods acquiring_async = {
    .am_await = (unaryfunc)acquiring_await,
    .am_send = (sendfunc)acquiring_am_send,
};

static PyMethodDef acquiring_methods[] = {
    {"send", (PyCFunction)acquiring_send, METH_O, "send(value): as a coroutine's send."},
    {"throw", (PyCFunction)(void (*)(void))acquiring_throw, METH_FASTCALL, "throw(exc): as a coroutine's throw."},
    {"close", (PyCFunction)acquiring_close, METH_NOARGS, "close(): as a coroutine's close."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef acquiring_getset[] = {
    {"inner", (getter)acquiring_get_inner, NULL, "asyncio's acquire() coroutine", NULL},
    {"__qualname__", (getter)acquiring_get_qualname, NULL, "asyncio's acquire()'s name", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AcquiringType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diag._origins.Acquiring",
    .tp_basicsize = sizeof(Acquiring),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An acquire() of an asyncio Lock or Semaphore whose holder diag records.",
    .tp_dealloc = (destructor)acquiring_dealloc,
    .tp_traverse = (traverseproc)acquiring_traverse,
    .tp_clear = (inquiry)acquiring_clear,
    .tp_as_async = &acquiring_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)acquiring_iternext,
    .tp_methods = acquiring_methods,
    .tp_getset = acquiring_getset,
};

typedef struct {
    PyObject_HEAD
    PyObject *original;  /* asyncio's method */
    int releases;        /* 0: an acquire, 1: a release */
    vectorcallfunc vectorcall;
    PyObject *dict;      /* attributes, as a function has: the coroutine-function marks */
} HeldMethod;

static PyObject *
held_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HeldMethod *self = (HeldMethod *)callable;
    PyObject *result = PyObject_Vectorcall(self->original, args, nargsf, kwnames);
    if (result == NULL || PyVectorcall_NARGS(nargsf) < 1) {
        return result;
    }
    PyObject *primitive = args[0];
    if (self->releases) {
        if (note_released(primitive) < 0 && !swallowed()) {
            Py_DECREF(result);
            return NULL;
        }
        return result;
    }
    Acquiring *aw = PyObject_GC_New(Acquiring, &AcquiringType);
    if (aw == NULL) {
        PyErr_Clear();
        return result;  /* unrecorded, but the program's acquire goes on */
    }
    aw->inner = result;
    aw->primitive = Py_NewRef(primitive);
    PyObject_GC_Track(aw);
    return (PyObject *)aw;
}

static PyObject *
held_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"original", "releases", NULL};
    PyObject *original;
    int releases;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Op:HeldMethod", kwlist, &original, &releases)) {
        return NULL;
    }
    HeldMethod *self = (HeldMethod *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->original = Py_NewRef(original);
    self->releases = releases;
    self->vectorcall = held_vectorcall;
    return (PyObject *)self;
}

static PyObject *
held_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
held_get_wrapped(HeldMethod *self, void *closure)
{
    return Py_NewRef(self->original);
}

static PyObject *
held_get_attr_of_original(HeldMethod *self, void *name)
{
    return PyObject_GetAttrString(self->original, (const char *)name);
}

static int
held_traverse(HeldMethod *self, visitproc visit, void *arg)
{
    Py_VISIT(self->original);
    Py_VISIT(self->dict);
    return 0;
}

static int
held_clear(HeldMethod *self)
{
    Py_CLEAR(self->original);
    Py_CLEAR(self->dict);
    return 0;
}

static void
held_dealloc(HeldMethod *self)
{
    PyObject_GC_UnTrack(self);
    held_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyGetSetDef held_getset[] = {
    {"__wrapped__", (getter)held_get_wrapped, NULL, "asyncio's own method", NULL},
    {"__name__", (getter)held_get_attr_of_original, NULL, NULL, "__name__"},
    {"__qualname__", (getter)held_get_attr_of_original, NULL, NULL, "__qualname__"},
    {"__doc__", (getter)held_get_attr_of_original, NULL, NULL, "__doc__"},
    /* what inspect and unittest.mock read to tell a coroutine function */
    {"__code__", (getter)held_get_attr_of_original, NULL, NULL, "__code__"},
    {"__defaults__", (getter)held_get_attr_of_original, NULL, NULL, "__defaults__"},
    {"__kwdefaults__", (getter)held_get_attr_of_original, NULL, NULL, "__kwdefaults__"},
    {"__annotations__", (getter)held_get_attr_of_original, NULL, NULL, "__annotations__"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HeldMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "diag._origins.HeldMethod",
    .tp_basicsize = sizeof(HeldMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "HeldMethod(original, releases): asyncio's Lock/Semaphore acquire or release, "
              "recording who holds the permit.",
    .tp_new = held_new,
    .tp_dealloc = (destructor)held_dealloc,
    .tp_traverse = (traverseproc)held_traverse,
    .tp_clear = (inquiry)held_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(HeldMethod, vectorcall),
    .tp_descr_get = held_descr_get,
    .tp_getset = held_getset,
    .tp_getattro = PyObject_GenericGetAttr,
    .tp_setattro = PyObject_GenericSetAttr,
    .tp_dictoffset = offsetof(HeldMethod, dict),
};

static PyObject *
mod_set_acquire_observer(PyObject *mod, PyObject *observer)
{
    Py_XSETREF(acquire_observer, observer == Py_None ? NULL : Py_NewRef(observer));
    Py_RETURN_NONE;
}

/* ---- await chains, for the task dump ------------------------------------------------
 *
 * diag/collect/task_collector.py follows each task's await chain through cr_await (or
 * gi_yieldfrom, ag_await) links.  Read from Python, every link's cr_frame makes a frame
 * object, and the first dump of 100,000 tasks spends most of its time making them.
 * Here the chain is read from the coroutines' embedded interpreter frames, and comes
 * back as a key (bytes: code address and instruction offset per frame, for tasks stuck
 * in the same place to share their analysis) and the coroutines themselves.
 */

static PyObject *str_cr_await = NULL, *str_gi_yieldfrom = NULL, *str_ag_await = NULL;
static PyObject *str_cr_frame = NULL, *str_gi_frame = NULL;

typedef struct {
    uintptr_t code;
    int32_t offset;
    int32_t pad;  /* keeps the key free of uninitialised bytes */
} ChainLink;

/* The coroutine behind a coroutine_wrapper (what coro.__await__() returns), found the
 * way the GC finds it: through the type's traverse function, no layout assumed. */
static int
find_coroutine(PyObject *obj, void *found)
{
    if (Py_TYPE(obj) == &PyCoro_Type) {
        *(PyObject **)found = obj;
        return 1;
    }
    return 0;
}

static int
is_coroutine_wrapper(PyTypeObject *type)
{
    return !(type->tp_flags & Py_TPFLAGS_HEAPTYPE) && type->tp_traverse != NULL
           && strcmp(type->tp_name, "coroutine_wrapper") == 0;
}

/* await_chain(coro, max_frames, skip_codes) -> (key, nodes) or None */
static PyObject *
mod_await_chain(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyTuple_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "await_chain(coro, max_frames, skip_codes: tuple)");
        return NULL;
    }
    Py_ssize_t max_frames = PyLong_AsSsize_t(args[1]);
    if (max_frames < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "max_frames must be >= 0");
        }
        return NULL;
    }
    PyObject *skip = args[2];
    PyObject *nodes = PyList_New(0);
    if (nodes == NULL) {
        return NULL;
    }
    ChainLink small[16];
    ChainLink *links = small;
    Py_ssize_t cap = 16, n = 0;
    PyObject *node = Py_NewRef(args[0]);
    PyObject *result = NULL;
    int fallback = 0;
    while (node != Py_None && n < max_frames) {
        PyTypeObject *type = Py_TYPE(node);
        PyObject *link_name;
        if (type == &PyCoro_Type) {
            link_name = str_cr_await;
        }
        else if (type == &PyGen_Type) {
            link_name = str_gi_yieldfrom;
        }
        else if (type == &PyAsyncGen_Type) {
            link_name = str_ag_await;
        }
        else if (is_coroutine_wrapper(type)) {
            /* a library's __await__ handing on a coroutine's (aiohttp's session.get) */
            PyObject *inner = NULL;
            type->tp_traverse(node, find_coroutine, &inner);
            Py_SETREF(node, Py_NewRef(inner != NULL ? inner : Py_None));
            continue;
        }
        else if (type == &AcquiringType) {
            Py_SETREF(node, Py_NewRef(((Acquiring *)node)->inner ? ((Acquiring *)node)->inner : Py_None));
            continue;  /* diag's own acquire: no frame, straight on to asyncio's */
        }
        else {
            /* What the Python walk does: the awaitables of an async generator and
             * coroutines of another implementation (with a cr_frame or gi_frame on a
             * plain class) are left to it; anything else (a future's iterator) ends the
             * chain. */
            const char *name = type->tp_name;
            fallback = strstr(name, "async_generator_asend") != NULL
                       || strstr(name, "async_generator_athrow") != NULL
                       || (type->tp_getattro == PyObject_GenericGetAttr
                           && (_PyType_Lookup(type, str_cr_frame) != NULL
                               || _PyType_Lookup(type, str_gi_frame) != NULL));
            break;
        }
        PyGenObject *gen = (PyGenObject *)node;
        if (gen->gi_frame_state >= FRAME_COMPLETED) {
            break;  /* finished: no frame, the end of the chain */
        }
        _PyInterpreterFrame *f = (_PyInterpreterFrame *)gen->gi_iframe;
        PyCodeObject *code = DIAG_FRAME_CODE(f);
        int skipped = 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(skip); i++) {
            if (PyTuple_GET_ITEM(skip, i) == (PyObject *)code) {
                skipped = 1;
                break;
            }
        }
        if (!skipped) {
            if (n == cap) {
                ChainLink *grown = PyMem_Malloc((size_t)cap * 2 * sizeof(ChainLink));
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                memcpy(grown, links, (size_t)n * sizeof(ChainLink));
                if (links != small) {
                    PyMem_Free(links);
                }
                links = grown;
                cap *= 2;
            }
            links[n].code = (uintptr_t)code;
            links[n].offset = (int32_t)_PyInterpreterFrame_LASTI(f);
            links[n].pad = 0;
            n++;
            if (PyList_Append(nodes, node) < 0) {
                goto done;
            }
        }
        PyObject *next = PyObject_GetAttr(node, link_name);
        if (next == NULL) {
            goto done;
        }
        Py_SETREF(node, next);
    }
    if (fallback) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)links, (Py_ssize_t)(n * (Py_ssize_t)sizeof(ChainLink)));
    if (key == NULL) {
        goto done;
    }
    result = PyTuple_Pack(2, key, nodes);
    Py_DECREF(key);
done:
    Py_DECREF(node);
    Py_DECREF(nodes);
    if (links != small) {
        PyMem_Free(links);
    }
    return result;
}

/* ---- a suspended coroutine's locals, by name --------------------------------------
 *
 * sync_collector.with_users asks whether a task's code still to run can use an object its
 * coroutine refers to.  The GC's referents say that the coroutine holds it, not in which
 * local; frame.f_locals would say, but on 3.11 and 3.12 it writes the frame's locals into
 * a dict kept on the frame.  Here the slots are read where the frame keeps them, only for
 * a coroutine or generator that is not running (created or suspended), under the GIL.
 */

#ifndef CO_FAST_CELL
#define CO_FAST_CELL 0x40
#endif
#ifndef CO_FAST_FREE
#define CO_FAST_FREE 0x80
#endif

/* frame_locals(coro) -> ((name, value, shared), ...) or None */
static PyObject *
mod_frame_locals(PyObject *mod, PyObject *node)
{
    PyTypeObject *type = Py_TYPE(node);
    if (type != &PyCoro_Type && type != &PyGen_Type) {
        Py_RETURN_NONE;
    }
    PyGenObject *gen = (PyGenObject *)node;
    if (gen->gi_frame_state >= FRAME_EXECUTING) {
        Py_RETURN_NONE;  /* running (on another thread's loop: its locals are moving), or done */
    }
    _PyInterpreterFrame *f = (_PyInterpreterFrame *)gen->gi_iframe;
    PyCodeObject *code = DIAG_FRAME_CODE(f);
    PyObject *names = code->co_localsplusnames;
    PyObject *kinds = code->co_localspluskinds;
    Py_ssize_t n = code->co_nlocalsplus;
    if (!PyTuple_Check(names) || !PyBytes_Check(kinds) || PyTuple_GET_SIZE(names) < n
            || PyBytes_GET_SIZE(kinds) < n) {
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(kinds);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = f->localsplus[i];
        if (value == NULL) {
            continue;
        }
        /* a cell shared with a function still alive (a closure, a generator expression
         * not yet run to its end) is read wherever that runs; one only this frame holds is
         * read only by this frame's code */
        int shared = (k[i] & (CO_FAST_CELL | CO_FAST_FREE)) && Py_REFCNT(value) > 1;
        PyObject *item = Py_BuildValue("(OOO)", PyTuple_GET_ITEM(names, i), value, shared ? Py_True : Py_False);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    PyObject *result = PyList_AsTuple(out);
    Py_DECREF(out);
    return result;
}

/* ---- module functions ------------------------------------------------------------ */

static PyObject *
mod_configure(PyObject *mod, PyObject *args)
{
    PyObject *codes_arg, *prefix_arg, *file_arg = NULL;
    if (!PyArg_ParseTuple(args, "O!U|U:configure", &PyDict_Type, &codes_arg, &prefix_arg, &file_arg)) {
        return NULL;
    }
    Py_XSETREF(codes, Py_NewRef(codes_arg));
    Py_XSETREF(skip_prefix, Py_NewRef(prefix_arg));
    Py_XSETREF(skip_origins_file, Py_XNewRef(file_arg));
    for (int i = 0; i < VERDICTS; i++) {  /* verdicts made before knew nothing of that file */
        Py_CLEAR(verdicts[i].code);
    }
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
mod_dying_task_origin(PyObject *mod, PyObject *task)
{
    /* The record of a task the GC is finalizing: its weak reference is already cleared, so
     * the entry at its address is taken as its own (nothing new can live at that address
     * until it is freed).  (seq, origin or None), or None when there is no entry. */
    Entry *e = find((uintptr_t)task);
    if (e == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *ref_obj = referent(e->ref);
    if (ref_obj != task && ref_obj != Py_None) {
        Py_RETURN_NONE;  /* another, living object's entry: never the case for a dying task */
    }
    if (e->code == NULL) {
        return Py_BuildValue("(LO)", e->seq, Py_None);
    }
    PyObject *parent = e->parent < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(e->parent);
    if (parent == NULL) {
        return NULL;
    }
    return Py_BuildValue("(L(NiNL))", e->seq, PyLong_FromVoidPtr((void *)e->code), e->offset, parent, e->seq);
}

static PyObject *
mod_stats(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("{s:n,s:n,s:n,s:L}", "entries", (Py_ssize_t)used, "capacity",
                         (Py_ssize_t)capacity, "prune_at", (Py_ssize_t)prune_at, "next_seq", next_seq);
}

/* ---- the reachability proof's marking (diag/collect/reachability.py) ---------------- */

/* The Python twin walks gc.get_referents a slice at a time in a bytecode loop, and the
 * interpreter lets the GIL go between two bytecodes whenever another thread asks for it:
 * the program then runs a loop turn in the middle of the marking, and what it moves from
 * a list not yet read to one already read goes unseen.  The proof lengthens the switch
 * interval so that nobody asks, but a thread that began waiting before still asks once,
 * and the proof then waits the long interval to get the GIL back.  Here no bytecode runs
 * from the first object to the last: the program is paused for the whole marking, and
 * the switch interval need not be long.  Nothing here calls the program's code: the
 * sets and dicts are keyed by ints (object addresses), and a type's module is read from
 * its own dict or name, never through a metaclass.
 *
 * The same rules as the Python twin: an untracked object has nothing inside to reach; a
 * blocked task reached as an object is not traversed (its coroutine stays closed until
 * the future it awaits is reached); diag's own objects are neither traversed nor count;
 * a module is never asked for its referents (on 3.12 the _asyncio module's traverse
 * visits a free list whose objects must not be held), its dict is; a weak reference's
 * live referent is reached, as code holding the reference can reach it. */

#if defined(CLOCK_THREAD_CPUTIME_ID) && defined(CLOCK_MONOTONIC)
#define DIAG_MARK 1

enum { KIND_PLAIN = 0, KIND_MINE = 1, KIND_MODULE = 2, KIND_WEAKREF = 3 };

static double
clock_seconds(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0) {
        return 0.0;
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static PyObject *str_module_attr = NULL;  /* "__module__" */
static PyObject *str_dict_attr = NULL;    /* "__dict__" */

static int
is_diag_module(PyObject *name)
{
    if (name == NULL || !PyUnicode_Check(name)) {
        return 0;
    }
    Py_ssize_t size;
    const char *text = PyUnicode_AsUTF8AndSize(name, &size);
    if (text == NULL) {
        PyErr_Clear();
        return 0;
    }
    return size >= 4 && memcmp(text, "diag", 4) == 0 && (size == 4 || text[4] == '.');
}

static int
type_is_diag(PyTypeObject *type)
{
    if (PyType_HasFeature(type, Py_TPFLAGS_HEAPTYPE)) {
        /* a class: its __module__ as kept in its own dict (what type.__module__ reads) */
        PyObject *module = type->tp_dict == NULL ? NULL : PyDict_GetItemWithError(type->tp_dict, str_module_attr);
        if (module == NULL) {
            PyErr_Clear();
        }
        return is_diag_module(module);
    }
    /* a static type: its module is its name up to the last dot */
    const char *dot = strrchr(type->tp_name, '.');
    size_t size = dot == NULL ? 0 : (size_t)(dot - type->tp_name);
    return size >= 4 && memcmp(type->tp_name, "diag", 4) == 0 && (size == 4 || type->tp_name[4] == '.');
}

static int
type_kind(PyTypeObject *type)
{
    if (type_is_diag(type)) {
        return KIND_MINE;  /* the agent itself, wherever the program (or a thread) keeps it */
    }
    if (PyType_IsSubtype(type, &PyModule_Type)) {
        return KIND_MODULE;
    }
    if (PyType_IsSubtype(type, &_PyWeakref_RefType)) {
        return KIND_WEAKREF;
    }
    return KIND_PLAIN;
}

typedef struct {
    PyObject *frontier;   /* list: objects to traverse */
    PyObject *seen;       /* set of ids */
    PyObject *blocked;    /* dict: id(task) -> task, for blocked tasks */
    PyObject *wakers;     /* dict: id(future) -> list of the blocked tasks it would wake */
    PyObject *activated;  /* set of ids of blocked tasks that can be woken */
    PyObject *kinds;      /* dict: id(type) -> kind */
} Marking;

static int
kind_of(Marking *m, PyTypeObject *type)
{
    PyObject *key = PyLong_FromVoidPtr((void *)type);
    if (key == NULL) {
        return -1;
    }
    PyObject *known = PyDict_GetItemWithError(m->kinds, key);
    if (known != NULL) {
        Py_DECREF(key);
        return (int)PyLong_AsLong(known);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(key);
        return -1;
    }
    int kind = type_kind(type);
    PyObject *value = PyLong_FromLong(kind);
    int err = value == NULL ? -1 : PyDict_SetItem(m->kinds, key, value);
    Py_XDECREF(value);
    Py_DECREF(key);
    return err < 0 ? -1 : kind;
}

/* The future with id `key` is reachable: the tasks it would wake are live, and the tasks
 * awaiting those, and so on. */
static int
activate(Marking *m, PyObject *key)
{
    if (!PyDict_GET_SIZE(m->wakers)) {
        return 0;
    }
    PyObject *pending = PyList_New(0);
    if (pending == NULL || PyList_Append(pending, key) < 0) {
        Py_XDECREF(pending);
        return -1;
    }
    while (PyList_GET_SIZE(pending)) {
        Py_ssize_t last = PyList_GET_SIZE(pending) - 1;
        PyObject *k = Py_NewRef(PyList_GET_ITEM(pending, last));
        if (PyList_SetSlice(pending, last, last + 1, NULL) < 0) {
            Py_DECREF(k);
            goto fail;
        }
        PyObject *tasks = PyDict_GetItemWithError(m->wakers, k);
        Py_DECREF(k);
        if (tasks == NULL) {
            if (PyErr_Occurred()) {
                goto fail;
            }
            continue;
        }
        if (!PyList_Check(tasks)) {
            continue;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tasks); i++) {
            PyObject *task = PyList_GET_ITEM(tasks, i);
            PyObject *tk = PyLong_FromVoidPtr((void *)task);
            if (tk == NULL) {
                goto fail;
            }
            int known = PySet_Contains(m->activated, tk);
            if (known == 0) {
                if (PySet_Add(m->activated, tk) < 0 || PySet_Add(m->seen, tk) < 0
                        || PyList_Append(m->frontier, task) < 0 || PyList_Append(pending, tk) < 0) {
                    known = -1;
                }
            }
            Py_DECREF(tk);
            if (known < 0) {
                goto fail;
            }
        }
    }
    Py_DECREF(pending);
    return 0;
fail:
    Py_DECREF(pending);
    return -1;
}

/* Add `ref` to seen; 1 if it was new, 0 if seen before, -1 on error. */
static int
see(Marking *m, PyObject *key)
{
    int known = PySet_Contains(m->seen, key);
    if (known != 0) {
        return known < 0 ? -1 : 0;
    }
    return PySet_Add(m->seen, key) < 0 ? -1 : 1;
}

static int
collect_referent(PyObject *op, void *arg)
{
    return op == NULL ? 0 : PyList_Append((PyObject *)arg, op);
}

/* One referent of a traversed object. */
static int
reach(Marking *m, PyObject *ref)
{
    if (!PyObject_IS_GC(ref) || !PyObject_GC_IsTracked(ref)) {
        return 0;  /* ints, strings, atomic-only containers: nothing inside to reach */
    }
    PyObject *key = PyLong_FromVoidPtr((void *)ref);
    if (key == NULL) {
        return -1;
    }
    int status = see(m, key);
    if (status <= 0) {
        goto done;
    }
    status = PyDict_Contains(m->blocked, key);
    if (status != 0) {
        status = status < 0 ? -1 : 0;  /* reached as an object: not woken */
        goto done;
    }
    if (PyFrame_Check(ref)) {
        /* Every executing frame of the program's threads is a root, seen before marking
         * starts; a frame owned by a coroutine or generator is suspended (or running) and
         * is followed.  Any other frame has finished (an exception's traceback keeps it):
         * it runs no code again, and what its locals hold is reached through it by no
         * code that could wake a waiter.  Not followed. */
        PyObject *gen = PyFrame_GetGenerator((PyFrameObject *)ref);
        if (gen == NULL) {
            status = 0;
            goto done;
        }
        Py_DECREF(gen);
    }
    int kind = kind_of(m, Py_TYPE(ref));
    if (kind < 0) {
        status = -1;
        goto done;
    }
    if (kind == KIND_MINE) {
        goto done;
    }
    Py_INCREF(ref);
    if (kind == KIND_MODULE) {
        /* its namespace, read through the type's __dict__ slot only when that is the
         * module type's own (a subclass defining __dict__ itself is the program's code) */
        PyObject *slot = _PyType_Lookup(Py_TYPE(ref), str_dict_attr);
        PyObject *own = _PyType_Lookup(&PyModule_Type, str_dict_attr);
        PyObject *namespace = slot != NULL && slot == own ? PyModule_GetDict(ref) : NULL;
        Py_DECREF(ref);
        if (namespace == NULL || !PyDict_CheckExact(namespace)) {
            PyErr_Clear();
            goto done;
        }
        Py_DECREF(key);
        key = PyLong_FromVoidPtr((void *)namespace);
        if (key == NULL) {
            return -1;
        }
        status = see(m, key);
        if (status <= 0) {
            goto done;
        }
        ref = Py_NewRef(namespace);
    }
    else if (kind == KIND_WEAKREF) {
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *target = NULL;
        if (PyWeakref_GetRef(ref, &target) < 0) {
            target = NULL;
        }
#else
        PyObject *target = PyWeakref_GetObject(ref);  /* borrowed; None once dead */
        if (target == Py_None) {
            target = NULL;
        }
        Py_XINCREF(target);
#endif
        if (target != NULL) {
            PyObject *tkey = PyLong_FromVoidPtr((void *)target);
            int fresh = tkey == NULL ? -1 : PySet_Contains(m->seen, tkey);
            if (fresh == 0) {
                fresh = PyDict_Contains(m->blocked, tkey);
            }
            if (fresh == 0) {
                int tkind = kind_of(m, Py_TYPE(target));
                if (tkind < 0) {
                    fresh = -1;
                }
                else if (tkind != KIND_MINE) {
                    if (PySet_Add(m->seen, tkey) < 0 || PyList_Append(m->frontier, target) < 0) {
                        fresh = -1;
                    }
                    else {
                        int wakes = PyDict_Contains(m->wakers, tkey);
                        if (wakes < 0 || (wakes && activate(m, tkey) < 0)) {
                            fresh = -1;
                        }
                    }
                }
            }
            Py_XDECREF(tkey);
            Py_DECREF(target);
            if (fresh < 0) {
                Py_DECREF(ref);
                status = -1;
                goto done;
            }
        }
        PyErr_Clear();  /* a reference that cannot be read reaches nothing */
    }
    status = PyList_Append(m->frontier, ref);
    Py_DECREF(ref);
    if (status == 0) {
        int wakes = PyDict_Contains(m->wakers, key);
        status = wakes < 0 ? -1 : wakes ? activate(m, key) : 0;
    }
done:
    Py_DECREF(key);
    return status < 0 ? -1 : 0;
}

static PyObject *
mod_mark(PyObject *mod, PyObject *args)
{
    Marking m;
    double cpu_left, wall_left;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!dd:mark", &PyList_Type, &m.frontier, &PySet_Type, &m.seen,
                          &PyDict_Type, &m.blocked, &PyDict_Type, &m.wakers, &PySet_Type, &m.activated,
                          &PyDict_Type, &m.kinds, &cpu_left, &wall_left)) {
        return NULL;
    }
    double cpu_deadline = clock_seconds(CLOCK_THREAD_CPUTIME_ID) + cpu_left;
    double wall_deadline = clock_seconds(CLOCK_MONOTONIC) + wall_left;
    PyObject *refs = PyList_New(0);
    if (refs == NULL) {
        return NULL;
    }
    Py_ssize_t count = 0;
    int complete = 1;
    while (PyList_GET_SIZE(m.frontier)) {
        if ((++count & 0x3FF) == 0 && (clock_seconds(CLOCK_THREAD_CPUTIME_ID) > cpu_deadline
                                       || clock_seconds(CLOCK_MONOTONIC) > wall_deadline)) {
            complete = 0;
            break;
        }
        Py_ssize_t last = PyList_GET_SIZE(m.frontier) - 1;
        PyObject *obj = Py_NewRef(PyList_GET_ITEM(m.frontier, last));
        if (PyList_SetSlice(m.frontier, last, last + 1, NULL) < 0) {
            Py_DECREF(obj);
            goto fail;
        }
        traverseproc traverse = Py_TYPE(obj)->tp_traverse;
        int err = 0;
        if (PyObject_IS_GC(obj) && traverse != NULL) {
            err = traverse(obj, collect_referent, refs);
        }
        Py_DECREF(obj);
        if (err) {
            goto fail;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(refs); i++) {
            /* one object can list millions (a big list): the clock is read among them too */
            if (i && (i & 0x3FFF) == 0 && (clock_seconds(CLOCK_THREAD_CPUTIME_ID) > cpu_deadline
                                            || clock_seconds(CLOCK_MONOTONIC) > wall_deadline)) {
                complete = 0;
                break;
            }
            if (reach(&m, PyList_GET_ITEM(refs, i)) < 0) {
                goto fail;
            }
        }
        if (!complete) {
            break;
        }
        if (PyList_SetSlice(refs, 0, PyList_GET_SIZE(refs), NULL) < 0) {
            goto fail;
        }
    }
    Py_DECREF(refs);
    return PyBool_FromLong(complete);
fail:
    Py_DECREF(refs);
    return NULL;
}

#endif /* CLOCK_THREAD_CPUTIME_ID */

/* ---- the stack a long call holding the GIL ends in ----------------------------------
 *
 * A loop thread that wakes from its poll into one long C call holding the GIL (a big
 * json.dumps, a regex) cannot be sampled by any thread: each needs the GIL.  When the
 * call returns, the thread gives the GIL to whichever waiter the OS wakes first, often
 * not the watchdog, and may have left the calling function before the watchdog reads
 * its stack.  Python's pending calls are the one thing that runs on the main thread at
 * that very point: a pending call asked for without the GIL runs there at the next
 * check between bytecodes, which for a long call is as it returns, before the GIL is
 * handed over.  sleep_arming() is the watchdog's sleep: it asks for that call as it
 * wakes, still without the GIL, and ended_stack() gives what the call read.  The call
 * reads code objects and line numbers, keeps no frame, and never raises. */

#define ENDED_FRAMES 64

static int ended_queued = 0;          /* asked for and not yet run: set without the GIL */
static int arming_open = 0;           /* set_arming(): closed from atexit on, since a request
                                         made while the interpreter is being torn down would
                                         touch a pending-call queue that is being freed */
static double ended_at = -1.0;        /* CLOCK_MONOTONIC seconds when the call last ran */
static PyObject *ended_stack = NULL;  /* tuple of (code, line), innermost first */

static double
monotonic_seconds(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return -1.0;
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int
read_ended_stack(void *unused)
{
    (void)unused;
    __atomic_store_n(&ended_queued, 0, __ATOMIC_SEQ_CST);
    double now = monotonic_seconds();
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *out = PyList_New(0);
    PyFrameObject *frame = PyEval_GetFrame();  /* borrowed */
    Py_XINCREF(frame);
    while (out != NULL && frame != NULL && PyList_GET_SIZE(out) < ENDED_FRAMES) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        PyObject *item = Py_BuildValue("(Ni)", (PyObject *)code, PyFrame_GetLineNumber(frame));
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(item);
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    if (out != NULL) {
        PyObject *stack = PyList_AsTuple(out);
        Py_DECREF(out);
        if (stack != NULL) {
            PyObject *old = ended_stack;
            ended_stack = stack;
            ended_at = now;
            Py_XDECREF(old);
        }
    }
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
    return 0;  /* never an error: it would be raised in the program's own code */
}

static PyObject *
mod_sleep_arming(PyObject *self, PyObject *args)
{
    double seconds;
    int arm;
    if (!PyArg_ParseTuple(args, "dp", &seconds, &arm)) {
        return NULL;
    }
    if (!(seconds >= 0.0) || seconds > 3600.0) {
        PyErr_SetString(PyExc_ValueError, "seconds must be between 0 and 3600");
        return NULL;
    }
    double armed_at = -1.0;
    int fresh = 0;
    Py_BEGIN_ALLOW_THREADS
    struct timespec left;
    left.tv_sec = (time_t)seconds;
    left.tv_nsec = (long)((seconds - (double)left.tv_sec) * 1e9);
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
    if (arm && __atomic_load_n(&arming_open, __ATOMIC_SEQ_CST)) {
        armed_at = monotonic_seconds();
        if (!__atomic_exchange_n(&ended_queued, 1, __ATOMIC_SEQ_CST)) {
            if (Py_AddPendingCall(read_ended_stack, NULL) == 0) {
                fresh = 1;
            }
            else {
                __atomic_store_n(&ended_queued, 0, __ATOMIC_SEQ_CST);
            }
        }
    }
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(di)", armed_at, fresh);
}

static PyObject *
mod_set_arming(PyObject *self, PyObject *open)
{
    int value = PyObject_IsTrue(open);
    if (value < 0) {
        return NULL;
    }
    __atomic_store_n(&arming_open, value, __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyObject *
mod_ended_stack(PyObject *self, PyObject *unused)
{
    if (ended_stack == NULL) {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(dO)", ended_at, ended_stack);
}

static PyMethodDef mod_methods[] = {
    {"configure", mod_configure, METH_VARARGS,
     "configure(codes, asyncio_dir, wrapper_file=None): where code objects are kept by id, the "
     "directory whose frames are asyncio's own (skipped when looking for the creating code), and "
     "a file of diag's whose frames are skipped the same way."},
    {"task_seq", mod_task_seq, METH_O, "task_seq(task) -> the task's diag id (given now if new)."},
    {"task_origin", mod_task_origin, METH_O,
     "task_origin(task) -> (id(code), offset, creator id or None, id), or None."},
    {"dying_task_origin", mod_dying_task_origin, METH_O,
     "dying_task_origin(task) -> (id, task_origin or None) of a task being finalized, or None."},
    {"configure_holders", mod_configure_holders, METH_VARARGS,
     "configure_holders(get_running_loop, current_tasks, held_attr, wrappers_file): how to "
     "find the running task, the __dict__ key of a primitive's records, and the file whose "
     "frames the acquire site leaves out."},
    {"await_chain", (PyCFunction)(void (*)(void))mod_await_chain, METH_FASTCALL,
     "await_chain(coro, max_frames, skip_codes) -> (key, coroutines) or None: the await "
     "chain outermost first, without making frame objects; None when it passes through "
     "an awaitable only the Python walk reads.  Coroutines whose code is in skip_codes "
     "are left out."},
    {"frame_locals", mod_frame_locals, METH_O,
     "frame_locals(coro) -> ((name, value, shared), ...) or None: the bound local slots of a "
     "coroutine or generator that is not running (a cell variable's slot holds the cell; "
     "shared: a cell that something besides the frame holds); None for anything else."},
    {"set_acquire_observer", mod_set_acquire_observer, METH_O,
     "set_acquire_observer(callable or None): called with each primitive HeldMethod acquires."},
    {"stats", mod_stats, METH_NOARGS, "stats() -> the record table's size, for tests and benchmarks."},
    {"sleep_arming", mod_sleep_arming, METH_VARARGS,
     "sleep_arming(seconds, arm) -> (armed_at, fresh): sleeps without the GIL; with arm, then asks "
     "(still without it) for the main thread's stack to be read at its next check between "
     "bytecodes.  armed_at is CLOCK_MONOTONIC seconds (-1.0 unarmed); fresh is false when an "
     "earlier request had not run yet."},
    {"set_arming", mod_set_arming, METH_O,
     "set_arming(open): whether sleep_arming may ask for the stack at all (closed at exit)."},
    {"ended_stack", mod_ended_stack, METH_NOARGS,
     "ended_stack() -> (read_at, ((code, line), ...) innermost first) or None: what the last "
     "request of sleep_arming read."},
#ifdef DIAG_MARK
    {"mark", mod_mark, METH_VARARGS,
     "mark(frontier, seen, blocked, wakers, activated, kinds, cpu_seconds, wall_seconds) -> complete: "
     "the reachability proof's marking to its fixed point, or until it has used cpu_seconds of this "
     "thread's CPU time or wall_seconds have passed (False)."},
#endif
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
    str_cr_await = PyUnicode_InternFromString("cr_await");
    str_gi_yieldfrom = PyUnicode_InternFromString("gi_yieldfrom");
    str_ag_await = PyUnicode_InternFromString("ag_await");
    str_cr_frame = PyUnicode_InternFromString("cr_frame");
#ifdef DIAG_MARK
    str_module_attr = PyUnicode_InternFromString("__module__");
    str_dict_attr = PyUnicode_InternFromString("__dict__");
    if (str_module_attr == NULL || str_dict_attr == NULL) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    str_gi_frame = PyUnicode_InternFromString("gi_frame");
    if (str_cr_await == NULL || str_gi_yieldfrom == NULL || str_ag_await == NULL
            || str_cr_frame == NULL || str_gi_frame == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyType_Ready(&AcquiringType) < 0 || PyType_Ready(&HeldMethodType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&AcquiringType);
    if (PyModule_AddObject(m, "Acquiring", (PyObject *)&AcquiringType) < 0) {
        Py_DECREF(&AcquiringType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&HeldMethodType);
    if (PyModule_AddObject(m, "HeldMethod", (PyObject *)&HeldMethodType) < 0) {
        Py_DECREF(&HeldMethodType);
        Py_DECREF(m);
        return NULL;
    }
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
