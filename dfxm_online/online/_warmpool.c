/* A numpy memory handler that keeps freed large array buffers for reuse ("warm" memory).
 *
 * Why: a daemon's live publish at 2048^2 allocates ~0.6 GB of arrays (maps, projections,
 * colours, float32 copies) every period and frees them when the file is written. glibc
 * hands blocks of more than 32 MB straight back to the kernel, and the next period's arrays
 * are fresh pages again. On the VMs this was measured on, a fresh page costs a host-side
 * fault once the host has reclaimed it (within ~1 s of the free): a fresh 512 MB array took
 * 1.1-1.3 s to fill against 0.04 s warm. Figures for a whole publish are in warm_memory.py.
 *
 * The pool keeps buffers of at least MIN_POOLED bytes that numpy frees, up to a cap
 * (bytes), and hands one back for an allocation of exactly the same size (the same maps
 * recur every period); the least recently pooled blocks go back to the system first when
 * the cap would be exceeded. With an RSS limit, pooled blocks also go back (oldest first)
 * before a new large block is allocated while the process's resident memory would exceed
 * it, and a freed block is not kept while it does: blocks of sizes no longer asked for
 * (a previous scan's) cannot hold the process above the limit. It is a PyDataMem_Handler (numpy >= 1.22): installed per
 * thread/context with `install()`, it affects only the arrays allocated there, and every
 * array frees through the handler that allocated it. Thread-safe (one mutex, held only
 * for the table of at most MAX_BLOCKS entries).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIN_POOLED ((size_t)1 << 20)
#define MAX_BLOCKS 256

typedef struct {
    void *ptr;
    size_t size;
    unsigned long long when;
} Block;

static Block blocks[MAX_BLOCKS];
static int n_blocks = 0;
static size_t pooled = 0, cap = 0, rss_limit = 0;
static unsigned long long clock_ = 0, hits = 0, misses = 0;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* Resident bytes of this process (/proc/self/statm), 0 if unknown. */
static size_t resident(void)
{
    char buf[128];
    const int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0) return 0;
    const ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    unsigned long long size_pages = 0, resident_pages = 0;
    if (sscanf(buf, "%llu %llu", &size_pages, &resident_pages) != 2) return 0;
    return (size_t)resident_pages * (size_t)sysconf(_SC_PAGESIZE);
}

/* Free the oldest pooled block (lock held); 0 if the pool is empty. */
static int evict_oldest(void)
{
    if (!n_blocks) return 0;
    int old = 0;
    for (int i = 1; i < n_blocks; i++)
        if (blocks[i].when < blocks[old].when) old = i;
    free(blocks[old].ptr);
    pooled -= blocks[old].size;
    blocks[old] = blocks[--n_blocks];
    return 1;
}

/* Give pooled blocks back while the process would be above the RSS limit with `more`
 * bytes more (lock held). */
static void evict_over_limit(size_t more)
{
    if (rss_limit)
        while (n_blocks && resident() + more > rss_limit && evict_oldest()) {
        }
}

/* A pooled block of exactly `size` bytes, or NULL. */
static void *take(size_t size)
{
    void *p = NULL;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_blocks; i++) {
        if (blocks[i].size == size) {
            p = blocks[i].ptr;
            pooled -= size;
            blocks[i] = blocks[--n_blocks];
            break;
        }
    }
    if (p) hits++;
    else {
        misses++;
        evict_over_limit(size);  /* the caller allocates `size` new bytes next */
    }
    pthread_mutex_unlock(&lock);
    return p;
}

/* Free the oldest pooled blocks until `room` more bytes fit under the cap (lock held). */
static void evict_for(size_t room)
{
    while (n_blocks && (pooled + room > cap || n_blocks == MAX_BLOCKS)) evict_oldest();
}

static void *pool_malloc(void *ctx, size_t size)
{
    (void)ctx;
    if (size >= MIN_POOLED) {
        void *p = take(size);
        if (p) return p;
    }
    return malloc(size);
}

static void *pool_calloc(void *ctx, size_t nelem, size_t elsize)
{
    (void)ctx;
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    const size_t size = nelem * elsize;
    if (size >= MIN_POOLED) {
        void *p = take(size);
        if (p) return memset(p, 0, size);
    }
    return calloc(nelem, elsize);
}

static void *pool_realloc(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    return realloc(ptr, size);
}

static void pool_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    if (ptr && size >= MIN_POOLED) {
        pthread_mutex_lock(&lock);
        /* above the limit, this block goes back to the system, and pooled ones with it */
        const int over = rss_limit && resident() > rss_limit;
        if (over) evict_over_limit(0);
        if (size <= cap && !over) {
            evict_for(size);
            blocks[n_blocks++] = (Block){ptr, size, ++clock_};
            pooled += size;
            pthread_mutex_unlock(&lock);
            return;
        }
        pthread_mutex_unlock(&lock);
    }
    free(ptr);
}

static PyDataMem_Handler handler = {
    "dfxm_warm_pool", 1, {NULL, pool_malloc, pool_calloc, pool_realloc, pool_free}};

PyDoc_STRVAR(install_doc,
"install() -> the previous handler\n\n"
"Arrays that numpy allocates in the calling thread (context) from now on come from the pool.");

static PyObject *install(PyObject *self, PyObject *noargs)
{
    PyObject *capsule = PyCapsule_New(&handler, "mem_handler", NULL);
    if (!capsule) return NULL;
    PyObject *old = PyDataMem_SetHandler(capsule);
    Py_DECREF(capsule);
    return old;
}

PyDoc_STRVAR(restore_doc, "restore(handler)\n\nPut back a handler returned by install().");

static PyObject *restore(PyObject *self, PyObject *old)
{
    PyObject *prev = PyDataMem_SetHandler(old);
    if (!prev) return NULL;
    Py_DECREF(prev);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(set_cap_doc,
"set_cap(nbytes, rss_limit=0)\n\nBytes the pool may keep (0: none), and the process's resident\n"
"bytes above which it keeps none (0: no limit); pooled blocks beyond them are freed now.");

static PyObject *set_cap(PyObject *self, PyObject *args)
{
    Py_ssize_t n, limit = 0;
    if (!PyArg_ParseTuple(args, "n|n", &n, &limit)) return NULL;
    if (n < 0 || limit < 0) {
        PyErr_SetString(PyExc_ValueError, "the cap and the RSS limit must be >= 0 bytes");
        return NULL;
    }
    if (limit > 0) {
        /* With an RSS limit, blocks of >= MIN_POOLED bytes are the pool's to keep or to give
         * back: glibc must not keep them too. Its mmap threshold otherwise rises to the
         * largest block freed (up to 32 MB), after which freed 1-32 MB blocks (float32 maps
         * at 2048^2 are 16 MB) stay in its heap: after a 2048^2 two-motor rehearsal the daemon
         * held 808 MiB resident with 352 MiB pooled, 513 MiB with this fixed threshold. */
        mallopt(M_MMAP_THRESHOLD, (int)MIN_POOLED);
    }
    pthread_mutex_lock(&lock);
    cap = (size_t)n;
    rss_limit = (size_t)limit;
    evict_for(0);
    evict_over_limit(0);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(make_room_doc,
"make_room(nbytes)\n\nFree pooled blocks (oldest first) until the resident bytes plus `nbytes`\n"
"are within the RSS limit: the caller is about to make that much memory resident without\n"
"allocating it through the pool (faulting in arrays it already has).");

static PyObject *make_room(PyObject *self, PyObject *args)
{
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be >= 0");
        return NULL;
    }
    pthread_mutex_lock(&lock);
    evict_over_limit((size_t)n);
    pthread_mutex_unlock(&lock);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(stats_doc, "stats() -> (pooled bytes, pooled blocks, cap, hits, misses, rss limit)");

static PyObject *stats(PyObject *self, PyObject *noargs)
{
    pthread_mutex_lock(&lock);
    const size_t p = pooled, c = cap, l = rss_limit;
    const int n = n_blocks;
    const unsigned long long h = hits, m = misses;
    pthread_mutex_unlock(&lock);
    return Py_BuildValue("(nnnKKn)", (Py_ssize_t)p, (Py_ssize_t)n, (Py_ssize_t)c, h, m, (Py_ssize_t)l);
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, install_doc},
    {"restore", restore, METH_O, restore_doc},
    {"set_cap", set_cap, METH_VARARGS, set_cap_doc},
    {"stats", stats, METH_NOARGS, stats_doc},
    {"make_room", make_room, METH_VARARGS, make_room_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_warmpool", "Reuse of freed large numpy buffers (see warm_memory.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__warmpool(void)
{
    import_array();
    return PyModule_Create(&module);
}
