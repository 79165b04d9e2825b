/*
 * export._header_look: the per-element look of IdentifierDictionary.add_header, compiled.
 *
 * Why: the objects of a study repeat most of their header byte for byte, so a later header
 * adds nothing to the study's dictionary, yet looking at its ~50 elements one by one in Python
 * cost 15-20 us an object (README "Cost of verification"), a fifth of the stream's
 * verification. This loop makes the same decisions, in the same order, at C speed; every
 * element it cannot settle from the tables it is given goes to the Python callback `slow`,
 * which reads it exactly as the pure-Python loop does (export/identifiers.py,
 * IdentifierDictionary._look_element). tests/test_identifier_cache.py checks both give the
 * same dictionary.
 *
 * look(items, raw_type, element_type, plain, converted_plain, done, charset_key, memo_max,
 *      pubs, private, converted, slow) -> None
 *
 *   items            the header's {tag: element} dict (pydicom Dataset._dict)
 *   raw_type         pydicom RawDataElement (a named tuple: tag, VR, length, value, ...)
 *   element_type     pydicom DataElement
 *   plain            {VR: {tag as int: 0 public text, 1 costly, 2 other}}
 *   converted_plain  {(tag as int, VR): whether a converted element is a plain public value}
 *   done             {(tag as int, VR as written, value bytes, charset_key): (public values,
 *                    private pairs, ...)}: costly elements this dictionary already read
 *   charset_key      the header's Specific Character Set, as text
 *   memo_max         the largest value (bytes) remembered in `done`
 *   pubs             list: (key, public values) appended for each costly element seen before
 *                    that offered public values
 *   private          list: extended by the private pairs of each costly element seen before
 *   converted        list: converted plain public elements appended
 *   slow             callable(tag, element): the Python look at one element
 *
 * element_of(items, tag) -> element or None: items.get(tag) without BaseTag.__eq__.
 *
 * look raises whatever `slow` raises; RuntimeError if the header's elements change in number while
 * it is looked at (as iterating a dict that changes size does).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define COSTLY 1
#define UNDEFINED_LENGTH 0xFFFFFFFFUL

/* RawDataElement's fields by position (pydicom 3: tag, VR, length, value, ...). */
#define RAW_VR 1
#define RAW_LENGTH 2
#define RAW_VALUE 3

static int call_slow(PyObject *slow, PyObject *tag, PyObject *elem) {
    PyObject *result = PyObject_CallFunctionObjArgs(slow, tag, elem, NULL);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* What `plain` says of (tag, VR), copied here as it is met: the same answer without making an
 * int of the tag and two dictionary lookups for each element. An entry never changes (the kind
 * of a tag read with a VR is fixed by the rules), so a slot is written once and never reset. */
#define KIND_SLOTS 4096
typedef struct {
    uint32_t tag;
    uint16_t vr;
    int8_t kind; /* 0 empty slot, else the kind + 1 */
} kind_slot;
static kind_slot kinds[KIND_SLOTS];
/* The `plain` table the copy was made from (held for the process): a call with another table
 * (a test's) neither reads nor writes the copy. */
static PyObject *kinds_owner = NULL;

/* A two-letter VR as 16 bits, or 0 when the VR is not two ASCII letters (None: implicit). */
static uint16_t vr_code(PyObject *vr) {
    if (!PyUnicode_CheckExact(vr) || PyUnicode_GET_LENGTH(vr) != 2 ||
        PyUnicode_KIND(vr) != PyUnicode_1BYTE_KIND) {
        return 0;
    }
    const Py_UCS1 *text = PyUnicode_1BYTE_DATA(vr);
    return (uint16_t)((text[0] << 8) | text[1]);
}

static size_t kind_slot_of(uint32_t tag, uint16_t vr) {
    uint64_t h = ((uint64_t)tag << 16 | vr) * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 52) % KIND_SLOTS;
}

static long cached_kind(PyObject *plain, unsigned long tag, PyObject *vr) {
    if (plain != kinds_owner) {
        return -1;
    }
    uint16_t code = vr_code(vr);
    if (code == 0 || tag > 0xFFFFFFFFUL) {
        return -1;
    }
    size_t at = kind_slot_of((uint32_t)tag, code);
    for (int probe = 0; probe < 8; probe++) {
        kind_slot *slot = &kinds[(at + probe) % KIND_SLOTS];
        if (slot->kind == 0) {
            return -1;
        }
        if (slot->tag == (uint32_t)tag && slot->vr == code) {
            return slot->kind - 1;
        }
    }
    return -1;
}

static void remember_kind(PyObject *plain, unsigned long tag, PyObject *vr, long how) {
    if (kinds_owner == NULL) {
        Py_INCREF(plain);
        kinds_owner = plain;
    }
    if (plain != kinds_owner) {
        return;
    }
    uint16_t code = vr_code(vr);
    if (code == 0 || tag > 0xFFFFFFFFUL || how < 0 || how > 100) {
        return;
    }
    size_t at = kind_slot_of((uint32_t)tag, code);
    for (int probe = 0; probe < 8; probe++) {
        kind_slot *slot = &kinds[(at + probe) % KIND_SLOTS];
        if (slot->kind == 0) {
            slot->tag = (uint32_t)tag;
            slot->vr = code;
            slot->kind = (int8_t)(how + 1);
            return;
        }
        if (slot->tag == (uint32_t)tag && slot->vr == code) {
            return;
        }
    }
    /* A full neighbourhood: this one is looked up in `plain` each time. */
}

/* A raw element: settled here when `plain` (or the copy above) knows its kind and, for a
 * costly one, when `done` holds it; else read by `slow`. The Python loop reads a raw element
 * whose tuple is shorter than pydicom's, or whose value is not bytes, as a slow one. */
static int look_raw(PyObject *tag, PyObject *raw, PyObject *plain, PyObject *done,
                    PyObject *charset_key, Py_ssize_t memo_max, PyObject *pubs,
                    PyObject *private_, PyObject *slow) {
    if (PyTuple_GET_SIZE(raw) <= RAW_VALUE) {
        return call_slow(slow, tag, raw);
    }
    PyObject *data = PyTuple_GET_ITEM(raw, RAW_VALUE);
    if (!PyBytes_CheckExact(data)) {
        return call_slow(slow, tag, raw);
    }
    unsigned long tag_value = PyLong_AsUnsignedLong(tag);
    if (tag_value == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    int costly = 0;
    PyObject *length = PyTuple_GET_ITEM(raw, RAW_LENGTH);
    if (PyLong_Check(length)) {
        unsigned long long n = PyLong_AsUnsignedLongLong(length);
        if (n == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
        } else if (n == UNDEFINED_LENGTH) {
            costly = 1;
        }
    }
    PyObject *vr = PyTuple_GET_ITEM(raw, RAW_VR);
    PyObject *itag = NULL; /* the tag as a plain int (a BaseTag compares in Python) */
    if (!costly) {
        long how = cached_kind(plain, tag_value, vr);
        if (how < 0) {
            itag = PyLong_FromUnsignedLong(tag_value);
            if (itag == NULL) {
                return -1;
            }
            PyObject *known = PyDict_GetItemWithError(plain, vr);
            PyObject *found = NULL;
            if (known != NULL && PyDict_Check(known)) {
                Py_INCREF(known);
                found = PyDict_GetItemWithError(known, itag);
                Py_XINCREF(found);
                Py_DECREF(known);
            }
            if (found == NULL) {
                Py_DECREF(itag);
                if (PyErr_Occurred()) {
                    return -1;
                }
                return call_slow(slow, tag, raw); /* a VR or tag not met yet */
            }
            how = PyLong_AsLong(found);
            Py_DECREF(found);
            if (how == -1 && PyErr_Occurred()) {
                Py_DECREF(itag);
                return -1;
            }
            remember_kind(plain, tag_value, vr, how);
        }
        if (how != COSTLY) {
            Py_XDECREF(itag); /* public or other: read later only if R6 needs its text */
            return 0;
        }
    }
    if (PyBytes_GET_SIZE(data) > memo_max) {
        Py_XDECREF(itag);
        return call_slow(slow, tag, raw);
    }
    if (itag == NULL) {
        itag = PyLong_FromUnsignedLong(tag_value);
        if (itag == NULL) {
            return -1;
        }
    }
    PyObject *key = PyTuple_Pack(4, itag, vr, data, charset_key); /* as ElementKey */
    Py_DECREF(itag);
    if (key == NULL) {
        return -1;
    }
    PyObject *seen = PyDict_GetItemWithError(done, key);
    if (seen == NULL) {
        Py_DECREF(key);
        if (PyErr_Occurred()) {
            return -1;
        }
        return call_slow(slow, tag, raw); /* a costly element not read for this subject yet */
    }
    if (!PyTuple_Check(seen) || PyTuple_GET_SIZE(seen) < 2) {
        Py_DECREF(key);
        PyErr_SetString(PyExc_TypeError, "done: each value must be a tuple of 2 or more");
        return -1;
    }
    /* Held while used: their truth may run Python code that changes `done`. */
    PyObject *public_values = PyTuple_GET_ITEM(seen, 0);
    PyObject *pairs = PyTuple_GET_ITEM(seen, 1);
    Py_INCREF(public_values);
    Py_INCREF(pairs);
    int status = -1;
    int has = PyObject_IsTrue(public_values);
    if (has < 0) {
        goto done;
    }
    if (has) {
        PyObject *entry = PyTuple_Pack(2, key, public_values);
        if (entry == NULL || PyList_Append(pubs, entry) < 0) {
            Py_XDECREF(entry);
            goto done;
        }
        Py_DECREF(entry);
    }
    has = PyObject_IsTrue(pairs);
    if (has < 0) {
        goto done;
    }
    if (has) {
        Py_ssize_t end = PyList_GET_SIZE(private_);
        if (PyList_SetSlice(private_, end, end, pairs) < 0) {
            goto done;
        }
    }
    status = 0;
done:
    Py_DECREF(key);
    Py_DECREF(public_values);
    Py_DECREF(pairs);
    return status;
}

static int look_converted(PyObject *tag, PyObject *elem, PyObject *converted_plain,
                          PyObject *converted, PyObject *slow) {
    unsigned long tag_value = PyLong_AsUnsignedLong(tag);
    if (tag_value == (unsigned long)-1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *vr = PyObject_GetAttrString(elem, "VR");
    if (vr == NULL) {
        return -1;
    }
    PyObject *itag = PyLong_FromUnsignedLong(tag_value);
    if (itag == NULL) {
        Py_DECREF(vr);
        return -1;
    }
    PyObject *key = PyTuple_Pack(2, itag, vr);
    Py_DECREF(itag);
    Py_DECREF(vr);
    if (key == NULL) {
        return -1;
    }
    PyObject *plain_text = PyDict_GetItemWithError(converted_plain, key);
    Py_DECREF(key);
    if (plain_text == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        return call_slow(slow, tag, elem); /* not classified yet */
    }
    int is_plain = PyObject_IsTrue(plain_text);
    if (is_plain < 0) {
        return -1;
    }
    if (is_plain) {
        return PyList_Append(converted, elem);
    }
    return call_slow(slow, tag, elem);
}

static PyObject *look(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *items, *raw_type, *element_type, *plain, *converted_plain, *done, *charset_key;
    Py_ssize_t memo_max;
    PyObject *pubs, *private_, *converted, *slow;
    if (!PyArg_ParseTuple(args, "O!OOO!O!O!UnO!O!O!O:look", &PyDict_Type, &items, &raw_type,
                          &element_type, &PyDict_Type, &plain, &PyDict_Type, &converted_plain,
                          &PyDict_Type, &done, &charset_key, &memo_max, &PyList_Type, &pubs,
                          &PyList_Type, &private_, &PyList_Type, &converted, &slow)) {
        return NULL;
    }
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "look: slow must be callable");
        return NULL;
    }
    /* Raw elements are read as tuples by position: raw_type must be a tuple type. */
    if (!PyType_Check(raw_type) || !PyType_IsSubtype((PyTypeObject *)raw_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "look: raw_type must be a tuple type");
        return NULL;
    }
    if (!PyType_Check(element_type)) {
        PyErr_SetString(PyExc_TypeError, "look: element_type must be a type");
        return NULL;
    }
    Py_ssize_t pos = 0;
    Py_ssize_t size = PyDict_Size(items);
    PyObject *tag, *elem;
    while (PyDict_Next(items, &pos, &tag, &elem)) {
        /* The callback may convert an element in place (a value replaced, no key added). */
        Py_INCREF(tag);
        Py_INCREF(elem);
        int status = 0;
        if ((PyObject *)Py_TYPE(elem) == raw_type) {
            status = look_raw(tag, elem, plain, done, charset_key, memo_max, pubs, private_,
                              slow);
        } else if ((PyObject *)Py_TYPE(elem) == element_type) {
            status = look_converted(tag, elem, converted_plain, converted, slow);
        } else if (elem != Py_None) {
            status = call_slow(slow, tag, elem);
        }
        Py_DECREF(tag);
        Py_DECREF(elem);
        if (status < 0) {
            return NULL;
        }
        if (PyDict_Size(items) != size) {
            PyErr_SetString(PyExc_RuntimeError, "the header's elements changed while read");
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* element_of(items, tag) -> the element of `tag` (an int) in the header's {tag: element} dict,
 * or None: the same as items.get(tag) without calling BaseTag.__eq__ (Python) on the key. */
static PyObject *element_of(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *items, *tag_object;
    if (!PyArg_ParseTuple(args, "O!O!:element_of", &PyDict_Type, &items, &PyLong_Type,
                          &tag_object)) {
        return NULL;
    }
    unsigned long wanted = PyLong_AsUnsignedLong(tag_object);
    if (wanted == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or too large: no element has that tag */
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = 0;
    PyObject *tag, *elem;
    while (PyDict_Next(items, &pos, &tag, &elem)) {
        if (!PyLong_Check(tag)) {
            continue;
        }
        unsigned long value = PyLong_AsUnsignedLong(tag);
        if (value == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            continue;
        }
        if (value == wanted) {
            Py_INCREF(elem);
            return elem;
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"look", look, METH_VARARGS,
     "look(items, raw_type, element_type, plain, converted_plain, done, charset_key, memo_max, "
     "pubs, private, converted, slow) -> None: the per-element look of "
     "IdentifierDictionary.add_header (see the module's source)."},
    {"element_of", element_of, METH_VARARGS,
     "element_of(items, tag) -> the element of tag in a header's {tag: element} dict, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "export._header_look",
    "The per-element look of IdentifierDictionary.add_header, compiled.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__header_look(void) { return PyModule_Create(&module); }
