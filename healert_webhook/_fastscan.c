/* The optional native field scanner: the five deciding fields of audit events, read in
 * one pass by a strict JSON validator (healert_webhook/nativescan.py has the contract).
 *
 * Whatever it answers equals orjson's reading of the same bytes; whenever it is not sure
 * of that it answers None and the pure path (fieldpass.py) reads the bytes instead. So
 * it refuses, as None: anything orjson refuses (RFC 8259 grammar, strict UTF-8 in
 * strings, escapes with paired surrogates, no control characters, no BOM, nothing after
 * the document) and, to stay on the safe side, numbers whose conversion to a double could
 * overflow, nesting deeper than MAX_DEPTH, and a body of more than MAX_ITEMS items. A
 * deciding field that is not a plain string (or null, or absent), or a key at a deciding
 * level written with escapes, makes that event's fields None ("not sure") while the rest
 * of a body is still answered.
 *
 * No Python object is made until the whole input has been validated; the scan itself
 * touches only the input's bytes and a C array, so it runs without the GIL on large
 * inputs (bytes, or a view of bytes: nothing can change them meanwhile).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Below orjson's 1024 with room to spare; real events nest about 15 deep. */
#define MAX_DEPTH 512
/* Bounds the C array (and the answer) to a few MiB whatever the body; the apiserver
 * sends at most a few hundred events a batch. */
#define MAX_ITEMS 65536
/* A number is answered only when |value| < 10^MAX_MAGNITUDE (a double holds 1.8e308),
 * and its exponent is no lower than -MAX_MAGNITUDE. */
#define MAX_MAGNITUDE 300
/* Bodies at least this long are scanned without the GIL. */
#define NOGIL_BYTES 65536

typedef struct {
    const unsigned char *ptr;
    Py_ssize_t len;
    int ascii; /* no byte above 0x7F (escapes aside) */
} Span;

/* A deciding value: absent or null, a string without escapes, or anything else. */
enum { V_NULL = 0, V_STR = 1, V_BAD = 2 };
/* impersonatedUser read as Python's truth of orjson's value, or not known (a number). */
enum { T_FALSE = 0, T_TRUE = 1, T_BAD = 2 };

enum { F_STAGE, F_VERB, F_USERNAME, F_RESOURCE, F_SUBRESOURCE, F_NAMESPACE, N_VALUES };

typedef struct {
    unsigned char kind;
    Span s;
} Value;

typedef struct {
    Value v[N_VALUES];
    unsigned char impersonated;
    unsigned char unsure; /* a key at a deciding level was escaped, or not an object */
} Fields;

typedef struct {
    Py_ssize_t start, end;
    Fields f;
} Item;

typedef struct {
    const unsigned char *p, *end, *base;
    Item *items;
    Py_ssize_t n_items, cap_items;
} Scanner;

/* What batch_items reads of a body that is an object. */
enum { K_OTHER = 0, K_EVENTLIST = 1 };
enum { I_NONE = 0, I_LIST = 1, I_OTHER = 2 };

typedef struct {
    unsigned char kind;
    unsigned char items;
    unsigned char audit_id;
} Body;

#define FAIL (-1)
#define HOT static inline __attribute__((always_inline))

static int skip_value(Scanner *s, int depth);
static int scan_items(Scanner *s, int depth);

HOT void skip_ws(Scanner *s)
{
    const unsigned char *p = s->p, *end = s->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    s->p = p;
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static inline int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The code unit of the four hex digits at p, or -1. */
static int hex4(const unsigned char *p, const unsigned char *end)
{
    int code = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p[i]);
        if (h < 0)
            return -1;
        code = code * 16 + h;
    }
    return code;
}

/* After the escape at p (p[0] is the backslash), or NULL when orjson refuses it. */
static const unsigned char *escape(const unsigned char *p, const unsigned char *end)
{
    if (end - p < 2)
        return NULL;
    switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        return p + 2;
    case 'u': {
        int code = hex4(p + 2, end);
        if (code < 0 || (code >= 0xDC00 && code <= 0xDFFF))
            return NULL;
        if (code < 0xD800 || code > 0xDBFF)
            return p + 6;
        if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
            return NULL;
        int low = hex4(p + 8, end);
        if (low < 0xDC00 || low > 0xDFFF)
            return NULL;
        return p + 12;
    }
    default:
        return NULL;
    }
}

/* After the UTF-8 sequence at p (p[0] >= 0x80), or NULL: no overlong forms, no
 * surrogates, nothing above U+10FFFF. */
static const unsigned char *utf8_sequence(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xBF;
    Py_ssize_t n;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return NULL;
    }
    if (end - p < n || p[1] < lo || p[1] > hi)
        return NULL;
    for (Py_ssize_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return NULL;
    return p + n;
}

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
/* Bytes below n (n <= 128) in x; the lowest flagged byte is always a true one. */
#define BELOW(x, n) (((x) - ONES * (n)) & ~(x) & HIGHS)

/* How strings are scanned: SSE2, else eight bytes in a word, else a byte at a time
 * (FASTSCAN_NO_SSE2 and FASTSCAN_NO_SWAR choose the others, to test them here). */
#if defined(__SSE2__) && !defined(FASTSCAN_NO_SSE2)
#include <emmintrin.h>
#define SSE2_STRINGS 1
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ \
    && defined(__GNUC__) && !defined(FASTSCAN_NO_SWAR)
#define SWAR_STRINGS 1
#endif

/* A string at s->p (its opening quote): its raw content and whether it holds escapes. */
HOT int
scan_string(Scanner *s, Span *out, int *escaped)
{
    const unsigned char *p = s->p + 1, *end = s->end;
    const unsigned char *start = p;
    int esc = 0, ascii = 1;
    for (;;) {
#if defined(SSE2_STRINGS)
        /* sixteen bytes at a time until a quote, a backslash, a control byte or a high
         * one (a signed compare: bytes from 0x80 are negative, so below 0x20 too) */
        const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
        const __m128i space = _mm_set1_epi8(0x20);
        while (end - p >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            __m128i quotes = _mm_cmpeq_epi8(x, quote);
            __m128i hit = _mm_or_si128(_mm_or_si128(quotes, _mm_cmpeq_epi8(x, backslash)),
                                       _mm_cmplt_epi8(x, space));
            unsigned m = (unsigned)_mm_movemask_epi8(hit);
            if (m) {
                unsigned first = m & (0u - m);
                p += __builtin_ctz(m);
                if (first & (unsigned)_mm_movemask_epi8(quotes))
                    goto closed; /* the usual end: no escape, nothing above ASCII */
                break;
            }
            p += 16;
        }
#elif defined(SWAR_STRINGS)
        /* eight bytes at a time until a quote, a backslash, a control byte or a high one */
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            uint64_t m = BELOW(x, 0x20) | BELOW(x ^ (ONES * '"'), 1)
                | BELOW(x ^ (ONES * '\\'), 1) | (x & HIGHS);
            if (m) {
                p += __builtin_ctzll(m) >> 3;
                break;
            }
            p += 8;
        }
#endif
        if (p >= end)
            return FAIL;
        unsigned char c = *p;
        if (c == '"')
            break;
        if (c == '\\') {
            esc = 1;
            p = escape(p, end);
        } else if (c < 0x20) {
            return FAIL;
        } else if (c < 0x80) {
            p++;
            continue;
        } else {
            ascii = 0;
            p = utf8_sequence(p, end);
        }
        if (p == NULL)
            return FAIL;
    }
#if defined(SSE2_STRINGS)
closed:
#endif
    out->ptr = start;
    out->len = p - start;
    out->ascii = ascii;
    *escaped = esc;
    s->p = p + 1;
    return 0;
}

HOT int skip_string(Scanner *s)
{
    Span span;
    int escaped;
    return scan_string(s, &span, &escaped);
}

static int skip_number(Scanner *s)
{
    const unsigned char *p = s->p, *end = s->end, *digits;
    Py_ssize_t int_digits;
    long exponent = 0;
    if (*p == '-')
        p++;
    if (p >= end)
        return FAIL;
    if (*p == '0') {
        p++;
        int_digits = 1;
    } else if (*p >= '1' && *p <= '9') {
        digits = p;
        while (p < end && is_digit(*p))
            p++;
        int_digits = p - digits;
    } else {
        return FAIL;
    }
    if (p < end && *p == '.') {
        digits = ++p;
        while (p < end && is_digit(*p))
            p++;
        if (p == digits)
            return FAIL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int negative = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            negative = *p++ == '-';
        digits = p;
        while (p < end && is_digit(*p)) {
            if (exponent < 100000)
                exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (p == digits)
            return FAIL;
        if (negative)
            exponent = -exponent;
    }
    /* not sure past these: orjson calls an infinite double an error */
    if (int_digits > MAX_MAGNITUDE || exponent < -MAX_MAGNITUDE
        || int_digits + exponent > MAX_MAGNITUDE)
        return FAIL;
    s->p = p;
    return 0;
}

static int skip_literal(Scanner *s, const char *word, Py_ssize_t n)
{
    if (s->end - s->p < n || memcmp(s->p, word, (size_t)n) != 0)
        return FAIL;
    s->p += n;
    return 0;
}

/* Iterating an object or an array, `close` its closing byte: at its opening byte
 * (first) or after a member (next), 1 when a member follows, 0 past its end. Whatever
 * is not a member, a comma or the closing byte, and the end of the input, fail. */
HOT int members_first(Scanner *s, int depth, unsigned char close)
{
    if (depth > MAX_DEPTH)
        return FAIL;
    s->p++;
    skip_ws(s);
    if (s->p >= s->end)
        return FAIL;
    if (*s->p == close) {
        s->p++;
        return 0;
    }
    return 1;
}

HOT int members_next(Scanner *s, unsigned char close)
{
    skip_ws(s);
    if (s->p >= s->end)
        return FAIL;
    if (*s->p == close) {
        s->p++;
        return 0;
    }
    if (*s->p != ',')
        return FAIL;
    s->p++;
    skip_ws(s);
    return s->p < s->end ? 1 : FAIL;
}

/* A key and its colon; the value starts at s->p. */
HOT int object_key(Scanner *s, Span *key, int *escaped)
{
    if (s->p >= s->end || *s->p != '"' || scan_string(s, key, escaped) < 0)
        return FAIL;
    skip_ws(s);
    if (s->p >= s->end || *s->p != ':')
        return FAIL;
    s->p++;
    skip_ws(s);
    return s->p < s->end ? 0 : FAIL;
}

static int skip_object(Scanner *s, int depth)
{
    int more = members_first(s, depth, '}');
    while (more > 0) {
        Span key;
        int escaped;
        if (object_key(s, &key, &escaped) < 0 || skip_value(s, depth) < 0)
            return FAIL;
        more = members_next(s, '}');
    }
    return more;
}

static int skip_array(Scanner *s, int depth)
{
    int more = members_first(s, depth, ']');
    while (more > 0) {
        if (skip_value(s, depth) < 0)
            return FAIL;
        more = members_next(s, ']');
    }
    return more;
}

/* Any value at s->p; `depth` is that of the container holding it. */
static int skip_value(Scanner *s, int depth)
{
    if (s->p >= s->end)
        return FAIL;
    if (*s->p == '"') /* the usual value: before the switch's indirect jump */
        return skip_string(s);
    switch (*s->p) {
    case '"':
        return skip_string(s);
    case '{':
        return skip_object(s, depth + 1);
    case '[':
        return skip_array(s, depth + 1);
    case 't':
        return skip_literal(s, "true", 4);
    case 'f':
        return skip_literal(s, "false", 5);
    case 'n':
        return skip_literal(s, "null", 4);
    default:
        if (*s->p == '-' || is_digit(*s->p))
            return skip_number(s);
        return FAIL;
    }
}

/* A deciding value: a string without escapes, null, or anything else (V_BAD). */
static int read_value(Scanner *s, int depth, Value *v)
{
    int escaped;
    if (*s->p == '"') {
        if (scan_string(s, &v->s, &escaped) < 0)
            return FAIL;
        v->kind = escaped ? V_BAD : V_STR;
        return 0;
    }
    if (*s->p == 'n') {
        v->kind = V_NULL;
        return skip_literal(s, "null", 4);
    }
    v->kind = V_BAD;
    return skip_value(s, depth);
}

/* The truth of impersonatedUser's value as Python sees orjson's reading of it. */
static int read_truth(Scanner *s, int depth, unsigned char *truth)
{
    unsigned char c = *s->p;
    if (c == '{' || c == '[') {
        const unsigned char *q = s->p + 1;
        while (q < s->end && (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t'))
            q++;
        *truth = (q < s->end && *q == (c == '{' ? '}' : ']')) ? T_FALSE : T_TRUE;
    } else if (c == '"') {
        *truth = (s->end - s->p > 1 && s->p[1] != '"') ? T_TRUE : T_FALSE;
    } else if (c == 't') {
        *truth = T_TRUE;
    } else if (c == 'f' || c == 'n') {
        *truth = T_FALSE;
    } else {
        *truth = T_BAD; /* a number: zero or not is not worth reading here */
    }
    return skip_value(s, depth);
}

static inline int key_is(const Span *key, const char *name, Py_ssize_t n)
{
    return key->len == n && memcmp(key->ptr, name, (size_t)n) == 0;
}

/* user: an object (its username), null, or anything else. */
static int read_user(Scanner *s, int depth, Fields *f)
{
    Value *name = &f->v[F_USERNAME];
    name->kind = V_NULL;
    if (*s->p != '{') {
        int rc = read_value(s, depth, name);
        if (name->kind == V_STR)
            name->kind = V_BAD; /* a string is no user object */
        return rc;
    }
    int escaped_key = 0;
    int more = members_first(s, depth + 1, '}');
    while (more > 0) {
        Span key;
        int escaped;
        if (object_key(s, &key, &escaped) < 0)
            return FAIL;
        if (escaped) {
            escaped_key = 1;
            if (skip_value(s, depth + 1) < 0)
                return FAIL;
        } else if (key_is(&key, "username", 8)) {
            if (read_value(s, depth + 1, name) < 0)
                return FAIL;
        } else if (skip_value(s, depth + 1) < 0) {
            return FAIL;
        }
        more = members_next(s, '}');
    }
    if (escaped_key)
        name->kind = V_BAD;
    return more;
}

/* objectRef: an object (resource, subresource, namespace), null, or anything else. */
static int read_ref(Scanner *s, int depth, Fields *f)
{
    Value *v = &f->v[F_RESOURCE];
    for (int i = 0; i < 3; i++)
        v[i].kind = V_NULL;
    if (*s->p != '{') {
        int rc = read_value(s, depth, v);
        if (v->kind == V_STR)
            v->kind = V_BAD; /* a string is no objectRef either */
        v[1].kind = v[2].kind = v->kind;
        return rc;
    }
    int escaped_key = 0;
    int more = members_first(s, depth + 1, '}');
    while (more > 0) {
        Span key;
        int escaped, rc;
        if (object_key(s, &key, &escaped) < 0)
            return FAIL;
        if (escaped) {
            escaped_key = 1;
            rc = skip_value(s, depth + 1);
        } else if (key_is(&key, "resource", 8)) {
            rc = read_value(s, depth + 1, &v[0]);
        } else if (key_is(&key, "subresource", 11)) {
            rc = read_value(s, depth + 1, &v[1]);
        } else if (key_is(&key, "namespace", 9)) {
            rc = read_value(s, depth + 1, &v[2]);
        } else {
            rc = skip_value(s, depth + 1);
        }
        if (rc < 0)
            return FAIL;
        more = members_next(s, '}');
    }
    if (escaped_key)
        v[0].kind = v[1].kind = v[2].kind = V_BAD;
    return more;
}

static void fields_init(Fields *f)
{
    memset(f, 0, sizeof *f); /* every value null, nobody impersonated, sure */
}

/* An event object at s->p; with `body`, also what batch_items reads of it (the items of
 * an "items" array are then scanned as events into s->items). */
static int scan_event(Scanner *s, int depth, Fields *f, Body *body)
{
    int more = members_first(s, depth, '}');
    while (more > 0) {
        Span key;
        int escaped, rc;
        if (object_key(s, &key, &escaped) < 0)
            return FAIL;
        if (escaped) {
            if (body != NULL)
                return FAIL; /* it could be "items" or "kind": the whole body is unsure */
            f->unsure = 1;
            rc = skip_value(s, depth);
        } else if (key_is(&key, "stage", 5)) {
            rc = read_value(s, depth, &f->v[F_STAGE]);
        } else if (key_is(&key, "verb", 4)) {
            rc = read_value(s, depth, &f->v[F_VERB]);
        } else if (key_is(&key, "user", 4)) {
            rc = read_user(s, depth, f);
        } else if (key_is(&key, "objectRef", 9)) {
            rc = read_ref(s, depth, f);
        } else if (key_is(&key, "impersonatedUser", 16)) {
            rc = read_truth(s, depth, &f->impersonated);
        } else if (body != NULL && key_is(&key, "kind", 4)) {
            Value kind;
            int is_string = *s->p == '"';
            rc = read_value(s, depth, &kind);
            if (rc == 0 && is_string && kind.kind == V_BAD)
                return FAIL; /* an escaped string: it could spell EventList */
            body->kind = (kind.kind == V_STR && key_is(&kind.s, "EventList", 9))
                ? K_EVENTLIST : K_OTHER;
        } else if (body != NULL && key_is(&key, "items", 5)) {
            if (*s->p == '[') {
                body->items = I_LIST;
                rc = scan_items(s, depth);
            } else if (*s->p == 'n') {
                body->items = I_NONE;
                rc = skip_literal(s, "null", 4);
            } else {
                body->items = I_OTHER;
                rc = skip_value(s, depth);
            }
        } else if (body != NULL && key_is(&key, "auditID", 7)) {
            body->audit_id = 1;
            rc = skip_value(s, depth);
        } else {
            rc = skip_value(s, depth);
        }
        if (rc < 0)
            return FAIL;
        more = members_next(s, '}');
    }
    return more;
}

/* Room for one more item in s->items (at most MAX_ITEMS). */
static int grow_items(Scanner *s)
{
    if (s->n_items < s->cap_items)
        return 0;
    Py_ssize_t cap = s->cap_items ? s->cap_items * 2 : 64;
    if (cap > MAX_ITEMS)
        return FAIL;
    Item *grown = realloc(s->items, (size_t)cap * sizeof(Item));
    if (grown == NULL)
        return FAIL;
    s->items = grown;
    s->cap_items = cap;
    return 0;
}

/* An array of events at s->p (inside a container at `depth`), into s->items afresh. */
static int scan_items(Scanner *s, int depth)
{
    s->n_items = 0; /* a later "items" replaces an earlier one, as orjson reads it */
    int more = members_first(s, depth + 1, ']');
    while (more > 0) {
        if (grow_items(s) < 0)
            return FAIL;
        Item *item = &s->items[s->n_items];
        fields_init(&item->f);
        item->start = s->p - s->base;
        int rc;
        if (*s->p == '{') {
            rc = scan_event(s, depth + 2, &item->f, NULL);
        } else {
            item->f.unsure = 1; /* no event: the full parse says what it is */
            rc = skip_value(s, depth + 1);
        }
        if (rc < 0)
            return FAIL;
        item->end = s->p - s->base;
        s->n_items++;
        more = members_next(s, ']');
    }
    return more;
}

/* --- the answer as Python objects --------------------------------------------------- */

/* Recent short ASCII strings, so the values that repeat (stages, verbs, resources,
 * namespaces, service accounts) are one object each. */
#define CACHE_SLOTS 1024
#define CACHE_MAX_LEN 64
static PyObject *cache[CACHE_SLOTS];

static PyObject *make_str(const Span *span)
{
    const unsigned char *b = span->ptr;
    Py_ssize_t n = span->len;
    if (span->ascii && n <= CACHE_MAX_LEN) {
        uint32_t hash = (uint32_t)n * 2654435761u;
        if (n > 0)
            hash ^= (b[0] * 40503u) ^ (b[n - 1] * 9973u) ^ (b[n / 2] * 131u);
        PyObject **slot = &cache[hash & (CACHE_SLOTS - 1)];
        PyObject *found = *slot; /* only ASCII strings are kept */
        if (found != NULL && PyUnicode_GET_LENGTH(found) == n
            && memcmp(PyUnicode_1BYTE_DATA(found), b, (size_t)n) == 0)
            return Py_NewRef(found);
        PyObject *made = PyUnicode_New(n, 127);
        if (made == NULL)
            return NULL;
        memcpy(PyUnicode_1BYTE_DATA(made), b, (size_t)n);
        Py_XSETREF(*slot, Py_NewRef(made));
        return made;
    }
    return PyUnicode_DecodeUTF8((const char *)b, n, "strict");
}

static int fields_sure(const Fields *f)
{
    if (f->unsure || f->impersonated == T_BAD)
        return 0;
    for (int i = 0; i < N_VALUES; i++)
        if (f->v[i].kind == V_BAD)
            return 0;
    return 1;
}

/* (stage, verb, resource, subresource, namespace, username, impersonated), or None:
 * the first five are what a decision is cached by, as one slice. */
static PyObject *make_fields(const Fields *f)
{
    static const int order[] = {F_STAGE, F_VERB, F_RESOURCE, F_SUBRESOURCE,
                                F_NAMESPACE, F_USERNAME, -1};
    if (!fields_sure(f))
        Py_RETURN_NONE;
    PyObject *tuple = PyTuple_New(7);
    if (tuple == NULL)
        return NULL;
    for (int i = 0; i < 7; i++) {
        PyObject *item;
        if (order[i] < 0)
            item = PyBool_FromLong(f->impersonated == T_TRUE);
        else if (f->v[order[i]].kind == V_STR)
            item = make_str(&f->v[order[i]].s);
        else
            item = Py_NewRef(Py_None);
        if (item == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, item);
    }
    return tuple;
}

static PyObject *make_items(const Scanner *s)
{
    PyObject *list = PyList_New(s->n_items);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < s->n_items; i++) {
        const Item *item = &s->items[i];
        PyObject *fields = make_fields(&item->f);
        if (fields == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyObject *bound = Py_BuildValue("(nnN)", item->start, item->end, fields);
        if (bound == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, bound);
    }
    return list;
}

/* An item's answer from fieldpass's caches (see decide_body): the cached decision for
 * its first five values, the user choosing between a pair as fieldpass does; or its
 * Fields when a cache does not hold what it needs. A new reference, NULL on error. */
static PyObject *decide_item(const Fields *f, PyObject *by_values, PyObject *internal_of)
{
    static const int order[] = {F_STAGE, F_VERB, F_RESOURCE, F_SUBRESOURCE, F_NAMESPACE};
    PyObject *key = PyTuple_New(5);
    if (key == NULL)
        return NULL;
    for (int i = 0; i < 5; i++) {
        const Value *v = &f->v[order[i]];
        PyObject *item = v->kind == V_STR ? make_str(&v->s) : Py_NewRef(Py_None);
        if (item == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, item);
    }
    /* keys and values are str, None and tuples of them: no Python code runs here */
    PyObject *settled = PyDict_GetItemWithError(by_values, key); /* borrowed */
    Py_DECREF(key);
    if (settled == NULL)
        return PyErr_Occurred() ? NULL : make_fields(f);
    if (!PyTuple_CheckExact(settled))
        return Py_NewRef(settled); /* a reason, or None: a candidate */
    if (PyTuple_GET_SIZE(settled) != 2)
        return make_fields(f);
    int internal = 1; /* no user name: a failed authentication */
    const Value *user = &f->v[F_USERNAME];
    if (user->kind == V_STR) {
        PyObject *name = make_str(&user->s);
        if (name == NULL)
            return NULL;
        PyObject *known = PyDict_GetItemWithError(internal_of, name); /* borrowed */
        Py_DECREF(name);
        if (known == NULL)
            return PyErr_Occurred() ? NULL : make_fields(f);
        if (!PyBool_Check(known))
            return make_fields(f);
        internal = known == Py_True;
    }
    int person = !internal || f->impersonated == T_TRUE;
    return Py_NewRef(PyTuple_GET_ITEM(settled, person));
}

/* (answers, spans) for items scanned into `items`: see decide_body's docstring. */
static PyObject *decide_items(const Item *items, Py_ssize_t n, PyObject *by_values,
                              PyObject *internal_of)
{
    PyObject *answers = PyList_New(n), *spans = PyList_New(0);
    if (answers == NULL || spans == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Item *item = &items[i];
        PyObject *answer = fields_sure(&item->f)
            ? decide_item(&item->f, by_values, internal_of) : Py_NewRef(Py_False);
        if (answer == NULL)
            goto fail;
        PyList_SET_ITEM(answers, i, answer);
        if (PyUnicode_CheckExact(answer))
            continue; /* ruled out: its bytes are not needed */
        PyObject *span = Py_BuildValue("(nnn)", i, item->start, item->end);
        if (span == NULL || PyList_Append(spans, span) < 0) {
            Py_XDECREF(span);
            goto fail;
        }
        Py_DECREF(span);
    }
    return Py_BuildValue("(NN)", answers, spans);
fail:
    Py_XDECREF(answers);
    Py_XDECREF(spans);
    return NULL;
}

/* --- the functions --------------------------------------------------------------------- */

static void scanner_init(Scanner *s, const Py_buffer *view)
{
    memset(s, 0, sizeof *s);
    s->base = s->p = (const unsigned char *)view->buf;
    s->end = s->base + view->len;
}

/* The whole input is one JSON value with only whitespace after it. */
static int at_end(Scanner *s)
{
    skip_ws(s);
    return s->p == s->end ? 0 : FAIL;
}

static PyObject *scan_line(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    Scanner s;
    Fields f;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    scanner_init(&s, &view);
    fields_init(&f);
    skip_ws(&s);
    int rc = FAIL;
    if (s.p < s.end && *s.p == '{')
        rc = scan_event(&s, 1, &f, NULL);
    PyObject *answer;
    if (rc < 0 || at_end(&s) < 0)
        answer = Py_NewRef(Py_None);
    else
        answer = make_fields(&f);
    PyBuffer_Release(&view);
    return answer;
}

/* Scans a body (s at its first byte); 0 with the answer's shape in *one_event or s->items,
 * FAIL when not sure. */
static int scan_whole_body(Scanner *s, Fields *f, int *one_event)
{
    Body body = {K_OTHER, I_NONE, 0};
    skip_ws(s);
    if (s->p >= s->end)
        return FAIL;
    if (*s->p == '[') {
        if (scan_items(s, 0) < 0)
            return FAIL;
        return at_end(s);
    }
    if (*s->p != '{' || scan_event(s, 1, f, &body) < 0 || at_end(s) < 0)
        return FAIL;
    if (body.kind == K_EVENTLIST || (body.items != I_NONE && !body.audit_id)) {
        if (body.items == I_OTHER)
            return FAIL; /* not a list: the pure path raises BadDocument */
        if (body.items == I_NONE)
            s->n_items = 0;
        return 0;
    }
    *one_event = 1;
    return 0;
}

/* A body's items into s->items, as batch_items reads it (one Event: the whole input is
 * its one item); 0, or FAIL when not sure. Needs no GIL. */
static int scan_body_items(Scanner *s, Py_ssize_t unused)
{
    Fields f;
    int one_event = 0;
    (void)unused;
    fields_init(&f);
    if (scan_whole_body(s, &f, &one_event) < 0)
        return FAIL;
    if (!one_event)
        return 0;
    free(s->items);
    s->items = malloc(sizeof(Item));
    if (s->items == NULL)
        return FAIL;
    s->items[0].start = 0;
    s->items[0].end = s->end - s->base;
    s->items[0].f = f;
    s->n_items = 1;
    return 0;
}

/* Whether nothing can change `arg`'s bytes while the GIL is released: bytes, or a
 * memoryview of bytes (a slice of a read chunk). */
static int immutable(PyObject *arg)
{
    if (PyBytes_CheckExact(arg))
        return 1;
    if (!PyMemoryView_Check(arg))
        return 0;
    PyObject *base = PyMemoryView_GET_BASE(arg);
    return base != NULL && PyBytes_CheckExact(base);
}

/* `scan` over the input of `view` (`arg`'s), s set up over it; without the GIL when the
 * input is long and nothing can change it meanwhile. */
static int scan_input(Scanner *s, const Py_buffer *view, PyObject *arg,
                      int (*scan)(Scanner *, Py_ssize_t), Py_ssize_t longest)
{
    int rc;
    scanner_init(s, view);
    if (view->len >= NOGIL_BYTES && immutable(arg)) {
        Py_BEGIN_ALLOW_THREADS
        rc = scan(s, longest);
        Py_END_ALLOW_THREADS
    } else {
        rc = scan(s, longest);
    }
    return rc;
}

/* Whether a decide_ function was given `want` arguments, the second and third the two
 * caches (dicts); else a TypeError naming `usage`. */
static int decide_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                       const char *usage)
{
    if (nargs != want || !PyDict_CheckExact(args[1]) || !PyDict_CheckExact(args[2])) {
        PyErr_Format(PyExc_TypeError, "expected %s, the caches dicts", usage);
        return 0;
    }
    return 1;
}

static PyObject *scan_body(PyObject *module, PyObject *arg)
{
    Py_buffer view;
    Scanner s;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *answer = scan_input(&s, &view, arg, scan_body_items, 0) < 0
        ? Py_NewRef(Py_None) : make_items(&s);
    free(s.items);
    PyBuffer_Release(&view);
    return answer;
}

static PyObject *decide_body(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Scanner s;
    if (!decide_args(args, nargs, 3, "decide_body(data, by_values, internal_of)"))
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *answer = scan_input(&s, &view, args[0], scan_body_items, 0) < 0
        ? Py_NewRef(Py_None) : decide_items(s.items, s.n_items, args[1], args[2]);
    free(s.items);
    PyBuffer_Release(&view);
    return answer;
}

/* The lines of s's input, each ended by a newline (what follows the last one is not a
 * line), into s->items: each line's bounds, and its fields as scan_line reads them
 * (unsure when scan_line would answer None, or when the line is longer than `longest`).
 * FAIL past MAX_ITEMS lines or when out of memory. Needs no GIL. */
static int scan_lines(Scanner *s, Py_ssize_t longest)
{
    const unsigned char *line = s->base, *end = s->end;
    for (;;) {
        const unsigned char *nl = memchr(line, '\n', (size_t)(end - line));
        if (nl == NULL)
            return 0;
        if (grow_items(s) < 0)
            return FAIL;
        Item *item = &s->items[s->n_items++];
        fields_init(&item->f);
        item->start = line - s->base;
        item->end = nl - s->base;
        s->p = line;
        s->end = nl;
        int rc = FAIL;
        if (nl - line <= longest) {
            skip_ws(s);
            if (s->p < s->end && *s->p == '{')
                rc = scan_event(s, 1, &item->f, NULL);
            if (rc == 0)
                rc = at_end(s);
        }
        if (rc < 0)
            item->f.unsure = 1;
        s->end = end;
        line = nl + 1;
    }
}

static PyObject *decide_lines(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Scanner s;
    if (!decide_args(args, nargs, 4, "decide_lines(data, by_values, internal_of, longest)"))
        return NULL;
    Py_ssize_t longest = PyLong_AsSsize_t(args[3]);
    if (longest == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *answer = scan_input(&s, &view, args[0], scan_lines, longest) < 0
        ? Py_NewRef(Py_None) : decide_items(s.items, s.n_items, args[1], args[2]);
    free(s.items);
    PyBuffer_Release(&view);
    return answer;
}

PyDoc_STRVAR(scan_line_doc,
"scan_line(data, /)\n--\n\n"
"The deciding fields of one event's JSON: (stage, verb, resource, subresource,\n"
"namespace, username, impersonated), or None when not sure (see nativescan.py).");

PyDoc_STRVAR(scan_body_doc,
"scan_body(data, /)\n--\n\n"
"The items of a webhook body as batch_items reads it: [(start, end, fields or None)],\n"
"or None when not sure (see nativescan.py).");

PyDoc_STRVAR(decide_body_doc,
"decide_body(data, by_values, internal_of, /)\n--\n\n"
"scan_body's items answered from fieldpass's caches: (answers, spans), answers one per\n"
"item (a reason, None for a candidate, the item's fields when the caches do not settle\n"
"it, False when not sure of its fields), spans (index, start, end) of every item whose\n"
"answer is not a reason; or None when not sure of the body (see nativescan.py).");

PyDoc_STRVAR(decide_lines_doc,
"decide_lines(data, by_values, internal_of, longest, /)\n--\n\n"
"The lines of data (each ended by a newline) answered as decide_body answers items,\n"
"each line read as scan_line reads it; a line longer than `longest` bytes is answered\n"
"False; or None past MAX_ITEMS lines (see nativescan.py).");

static PyMethodDef methods[] = {
    {"scan_line", scan_line, METH_O, scan_line_doc},
    {"scan_body", scan_body, METH_O, scan_body_doc},
    {"decide_body", (PyCFunction)(void (*)(void))decide_body, METH_FASTCALL, decide_body_doc},
    {"decide_lines", (PyCFunction)(void (*)(void))decide_lines, METH_FASTCALL,
     decide_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fastscan",
    "The optional native field scanner (healert_webhook/nativescan.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastscan(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "MAX_DEPTH", MAX_DEPTH) < 0
        || PyModule_AddIntConstant(module, "MAX_ITEMS", MAX_ITEMS) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
