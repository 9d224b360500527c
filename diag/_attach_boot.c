/* The library `diag attach` loads into a running Python process.
 *
 * It links against no Python: every C-API function is looked up at run time, so one
 * build serves any CPython 3.11+.  Its constructor runs on whatever thread the injector
 * borrowed and only starts a detached thread; that thread takes the GIL like any other
 * thread and runs `<this library's path>.py` with a fresh globals dict.  Nothing runs on
 * the target's own threads, and a target that never releases the GIL only keeps this
 * thread waiting.  Errors are swallowed: nothing may reach the target's stderr.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef int (*int_void_fn)(void);
typedef void (*void_int_fn)(int);
typedef int (*run_fn)(const char *);

static char bootstrap[8192];

static void *run_bootstrap(void *unused)
{
    (void)unused;
    int_void_fn is_initialized = (int_void_fn)dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    int_void_fn ensure = (int_void_fn)dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    void_int_fn release = (void_int_fn)dlsym(RTLD_DEFAULT, "PyGILState_Release");
    run_fn run = (run_fn)dlsym(RTLD_DEFAULT, "PyRun_SimpleString");
    if (!is_initialized || !ensure || !release || !run || !is_initialized())
        return NULL;
    int state = ensure();
    run(bootstrap);
    release(state);
    return NULL;
}

__attribute__((constructor)) static void diag_attach_boot(void)
{
    Dl_info info;
    if (!dladdr((void *)diag_attach_boot, &info) || info.dli_fname == NULL)
        return;
    /* diag attach names the copy it loads with letters, digits, '/', '-', '_' and '.' only. */
    for (const char *p = info.dli_fname; *p; p++)
        if (*p == '\'' || *p == '\\' || *p == '\n')
            return;
    int n = snprintf(bootstrap, sizeof bootstrap,
                     "try:\n"
                     "    exec(compile(open('%s.py', 'rb').read(), '<diag attach>', 'exec'), "
                     "{'__name__': '__diag_attach__', 'BOOT': '%s'})\n"
                     "except BaseException:\n"
                     "    pass\n",
                     info.dli_fname, info.dli_fname);
    if (n <= 0 || (size_t)n >= sizeof bootstrap)
        return;
    pthread_t thread;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0)
        return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_create(&thread, &attr, run_bootstrap, NULL);
    pthread_attr_destroy(&attr);
}
