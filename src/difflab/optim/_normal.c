/* difflab.optim._normal: a fast, counter-based standard-normal stream for the Langevin optimizer.
 *
 * Pair j of the stream of `seed` is made from one 64-bit word
 *     z = mix64(key + (j + 1) * GAMMA),   key = mix64(seed)
 * the SplitMix64 output function (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number
 * generators", OOPSLA; the mix is Stafford's variant 13), and the Box-Muller transform
 * (Box & Muller 1958):
 *     u1 = (bits 40..63 + 1) / 2^24 in (0, 1],   v = bits 8..31 / 2^24 in [0, 1)
 *     r  = sqrt(-2 ln u1),   xi[2j] = r cos(2 pi v),   xi[2j+1] = r sin(2 pi v)
 * Being counter-based, any element range of the stream can be produced on its own: the
 * optimizer adds std * xi[start:start+n] straight into a parameter without a noise buffer.
 * ln, sin and cos are evaluated with our own float32 polynomials, and every choice is made
 * with arithmetic or bit operations instead of branches (a data-dependent branch made the loop
 * ~10x slower), so that the loop vectorizes on any SIMD width and every build (scalar, AVX2,
 * AVX-512) gives the same bits as the NumPy definition in normal.py (compiled with
 * -ffp-contract=off: no fused multiply-add).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define GAMMA 0x9e3779b97f4a7c15ULL
#define MIX1 0xbf58476d1ce4e5b9ULL
#define MIX2 0x94d049bb133111ebULL

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return z ^ (z >> 31);
}

static inline float f32_from_bits(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline uint32_t bits_from_f32(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

/* ln(u) for u in (0, 1]: u = m * 2^e with m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact),
 * s = f / (2 + f), ln(1 + f) = 2 atanh(s) = 2s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9 + ...). */
static inline float log_unit(float u) {
    uint32_t b = bits_from_f32(u);
    int32_t e = (int32_t)(b >> 23) - 127;
    uint32_t mb = (b & 0x007fffffu) | 0x3f800000u;               /* m in [1, 2) */
    int32_t big = mb > 0x3fb504f3u;       /* m > sqrt(2) (float order = bit order here) */
    float m = f32_from_bits(mb - ((uint32_t)big << 23));       /* exact: m or m / 2 */
    e = e + big;
    float f = m - 1.0f;
    float s = f / (2.0f + f);
    float s2 = s * s;
    float poly = 1.0f + s2 * (0.33333333f + s2 * (0.2f + s2 * (0.14285714f + s2 * 0.11111111f)));
    float ef = (float)e;
    /* ln 2 split in a high part with few mantissa bits (exact e * hi) and the rest */
    return ef * 0.693145751953125f + (ef * 1.4286068203094172e-06f + 2.0f * s * poly);
}

/* One Box-Muller pair from one 64-bit word. */
static inline void normal_pair(uint64_t z, float *c_out, float *s_out) {
    uint32_t hi = (uint32_t)(z >> 32), lo = (uint32_t)z;
    int32_t a = (int32_t)(hi >> 8);                      /* bits 40..63 of z */
    int32_t b = (int32_t)(lo >> 8);                      /* bits 8..31 of z */
    float u1 = (float)(a + 1) * 5.9604644775390625e-08f; /* 2^-24, exact */
    float lg = log_unit(u1);
    float r = __builtin_sqrtf(-2.0f * lg);               /* lg <= 0 for u1 <= 1 */
    /* angle 2 pi b / 2^24 = q * pi/2 + t, q = round(b / 2^22), |t| <= pi/4 */
    int32_t q = (b + (1 << 21)) >> 22;                   /* 0..4 */
    int32_t w = b - (q << 22);                           /* [-2^21, 2^21) */
    float t = (float)w * 3.7450702829239286e-07f;        /* 2 pi / 2^24 */
    float t2 = t * t;
    float sn = t * (1.0f + t2 * (-0.16666667f + t2 * (0.0083333333f
               + t2 * (-0.00019841270f + t2 * 2.7557319e-06f))));
    float cs = 1.0f + t2 * (-0.5f + t2 * (0.041666667f + t2 * (-0.0013888889f
               + t2 * (2.4801587e-05f + t2 * -2.7557319e-07f))));
    /* rotate (cos t, sin t) by q * pi/2 with bit operations only: odd q swaps the pair
     * (cos -> -sin, sin -> cos), q & 2 flips both signs */
    uint32_t swap = 0u - (uint32_t)(q & 1);
    uint32_t flip = ((uint32_t)q & 2u) << 30;
    uint32_t cb = bits_from_f32(cs), sb = bits_from_f32(sn);
    uint32_t c1 = (cb & ~swap) | ((sb ^ 0x80000000u) & swap);
    uint32_t s1 = (sb & ~swap) | (cb & swap);
    *c_out = r * f32_from_bits(c1 ^ flip);
    *s_out = r * f32_from_bits(s1 ^ flip);
}

/* gcc on x86-64: one clone per ISA level, picked at load time (DIFFLAB_NO_CLONES: one build for
 * the -march given, used by benchmarks/optim/normal_kernel_isa.py) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(DIFFLAB_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* The 64-bit word of pair `pair` (elements 2 pair and 2 pair + 1) of the stream with key `key`. */
static inline uint64_t pair_word(uint64_t key, uint64_t pair) {
    return mix64(key + (pair + 1) * GAMMA);
}

/* out[i] = xi[start + i] (accumulate == 0) or out[i] += std * xi[start + i], i < n. */
CLONES
static void stream_apply(float *out, int64_t n, uint64_t key, uint64_t start, float std,
                         int accumulate) {
    int64_t i = 0;
    float c, s;
    if ((start & 1) && n > 0) {            /* leading sin half */
        normal_pair(pair_word(key, start >> 1), &c, &s);
        out[0] = accumulate ? out[0] + std * s : s;
        i = 1;
    }
    uint64_t pair0 = (start + (uint64_t)i) >> 1;
    int64_t npairs = (n - i) / 2;
    float *o = out + i;
    uint64_t word = key + (pair0 + 1) * GAMMA;   /* counter term of pair_word, stepped by GAMMA */
    if (accumulate) {
        for (int64_t k = 0; k < npairs; k++, word += GAMMA) {
            normal_pair(mix64(word), &c, &s);
            o[2 * k] = o[2 * k] + std * c;
            o[2 * k + 1] = o[2 * k + 1] + std * s;
        }
    } else {
        for (int64_t k = 0; k < npairs; k++, word += GAMMA) {
            normal_pair(mix64(word), &c, &s);
            o[2 * k] = c;
            o[2 * k + 1] = s;
        }
    }
    if (i + 2 * npairs < n) {              /* trailing cos half */
        normal_pair(pair_word(key, pair0 + (uint64_t)npairs), &c, &s);
        out[n - 1] = accumulate ? out[n - 1] + std * c : c;
    }
}

/* apply(addresses, sizes, seed, start, std, accumulate): buffer i (a contiguous float32 array
 * of sizes[i] elements at addresses[i], owned by the caller and checked in normal.py) gets the
 * next sizes[i] elements of the stream of seed, beginning at element start; see stream_apply. */
static PyObject *apply(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "apply(addresses, sizes, seed, start, std, accumulate)");
        return NULL;
    }
    PyObject *addresses = PySequence_Fast(args[0], "apply: addresses must be a sequence");
    if (addresses == NULL)
        return NULL;
    PyObject *sizes = PySequence_Fast(args[1], "apply: sizes must be a sequence");
    if (sizes == NULL) {
        Py_DECREF(addresses);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(addresses);
    float **ptrs = NULL;
    int64_t *ns = NULL;
    PyObject *result = NULL;
    if (PySequence_Fast_GET_SIZE(sizes) != count) {
        PyErr_SetString(PyExc_ValueError, "apply: addresses and sizes differ in length");
        goto done;
    }
    ptrs = PyMem_Malloc((count + 1) * sizeof(float *));
    ns = PyMem_Malloc((count + 1) * sizeof(int64_t));
    if (ptrs == NULL || ns == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        ptrs[i] = (float *)PyLong_AsVoidPtr(PySequence_Fast_GET_ITEM(addresses, i));
        ns[i] = (int64_t)PyLong_AsLongLong(PySequence_Fast_GET_ITEM(sizes, i));
        if (PyErr_Occurred())
            goto done;
        if (ns[i] < 0 || (ns[i] > 0 && ptrs[i] == NULL)) {
            PyErr_SetString(PyExc_ValueError, "apply: need sizes >= 0 and non-null addresses");
            goto done;
        }
    }
    unsigned long long seed = PyLong_AsUnsignedLongLongMask(args[2]);
    unsigned long long start = PyLong_AsUnsignedLongLongMask(args[3]);
    double std = PyFloat_AsDouble(args[4]);
    int accumulate = PyObject_IsTrue(args[5]);
    if (PyErr_Occurred() || accumulate < 0)
        goto done;
    Py_BEGIN_ALLOW_THREADS
    uint64_t key = mix64((uint64_t)seed), position = (uint64_t)start;
    for (Py_ssize_t i = 0; i < count; i++) {
        stream_apply(ptrs[i], ns[i], key, position, (float)std, accumulate);
        position += (uint64_t)ns[i];
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(ptrs);
    PyMem_Free(ns);
    Py_DECREF(addresses);
    Py_DECREF(sizes);
    return result;
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))apply, METH_FASTCALL,
     "apply(addresses, sizes, seed, start, std, accumulate): write (or add std times) the "
     "stream of seed from element start into float32 buffers, one after the other"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_normal", NULL, -1, methods};

PyMODINIT_FUNC PyInit__normal(void) { return PyModule_Create(&module); }
