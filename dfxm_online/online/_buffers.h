/* Buffer-protocol helpers of the compiled C module (_pixelmaps.c).
 *
 * Arrays come in as C-contiguous buffers and are held in one `Held` per call, released
 * together on every exit path. The includer defines MAX_BUFS (buffers per call).
 */
#include <string.h>

typedef struct {
    Py_buffer views[MAX_BUFS];
    int n;
} Held;

static void release_all(Held *h)
{
    for (int i = 0; i < h->n; i++) PyBuffer_Release(&h->views[i]);
    h->n = 0;
}

/* The struct-module format code without its byte-order prefix. */
static const char *format_of(Py_buffer *v)
{
    const char *f = v->format ? v->format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    return f;
}

/* A C-contiguous buffer of `ndim` dimensions (format `fmt`, or any when NULL). */
static Py_buffer *get(Held *h, PyObject *obj, int ndim, const char *fmt, int writable, const char *name)
{
    if (h->n >= MAX_BUFS) {
        PyErr_SetString(PyExc_ValueError, "too many arrays");
        return NULL;
    }
    Py_buffer *v = &h->views[h->n];
    if (PyObject_GetBuffer(obj, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    h->n++;
    if (v->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, not %d", name, ndim, v->ndim);
        return NULL;
    }
    if (fmt && strcmp(format_of(v), fmt) != 0) {
        PyErr_Format(PyExc_TypeError, "%s must have format '%s', not '%s'", name, fmt, format_of(v));
        return NULL;
    }
    return v;
}

/* A sequence of (P,) rows of format `fmt` ("d": float64, "f": float32) into `rows`; None
 * entries give NULL when `allow_none`. `*count` < 0: any number up to `max_rows`, set on
 * return; otherwise exactly `*count`. */
static int get_rows_of(Held *h, PyObject *list, void **rows, Py_ssize_t *count, Py_ssize_t max_rows,
                       Py_ssize_t P, int writable, int allow_none, const char *fmt, const char *name)
{
    PyObject *seq = PySequence_Fast(list, "expected a sequence of arrays");
    if (!seq) return -1;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int status = -1;
    if (*count >= 0 && n != *count) {
        PyErr_Format(PyExc_ValueError, "%s: %zd rows, expected one entry per group (%zd)", name, n, *count);
        goto done;
    }
    if (n > max_rows) {
        PyErr_Format(PyExc_ValueError, "%s: %zd rows, at most %zd", name, n, max_rows);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (allow_none && item == Py_None) {
            rows[i] = NULL;
            continue;
        }
        Py_buffer *v = get(h, item, 1, fmt, writable, name);
        if (!v) goto done;
        if (v->shape[0] != P) {
            PyErr_Format(PyExc_ValueError, "%s rows must have %zd pixels", name, P);
            goto done;
        }
        rows[i] = v->buf;
    }
    *count = n;
    status = 0;
done:
    Py_DECREF(seq);
    return status;
}

/* get_rows_of for float64 rows. */
static int get_rows(Held *h, PyObject *list, double **rows, Py_ssize_t *count, Py_ssize_t max_rows,
                    Py_ssize_t P, int writable, int allow_none, const char *name)
{
    return get_rows_of(h, list, (void **)rows, count, max_rows, P, writable, allow_none, "d", name);
}

static int check_range(Py_ssize_t start, Py_ssize_t stop, Py_ssize_t P)
{
    if (start < 0 || stop > P || start > stop) {
        PyErr_Format(PyExc_ValueError, "pixel range [%zd, %zd) outside [0, %zd)", start, stop, P);
        return -1;
    }
    return 0;
}
