// libFuzzer target over the C ABI (include/powergrad/powergrad_c.h), host backend.
//
// The input bytes decode into a sequence of 1-6 C ABI calls over one arena of host memory, where
// the fuzzer picks every pointer as an offset into the arena (so arguments alias each other), every
// size, stride, enum value (out-of-range ints included), float (NaN, inf, huge) and struct_size.
// Each call is either
//   - "valid": arguments valid by construction (disjoint buffers, in-range values); the call must
//     succeed and its outputs are compared, element by element, with a float64 reference written
//     here from docs/design.md §2 (no library header is included: only the C ABI), or
//   - "raw": arguments as the fuzzer decoded them; the contract model below predicts, from the
//     documented rules (docs/design.md §8, docs/c-abi.md), whether the call must fail and with which
//     statuses.
// The oracle, for every call:
//   (a) the status is a pg_status_t value; a failure leaves a non-empty pg_last_error(), a success "";
//   (b) a failed call changes no byte of the arena or of its guard zones;
//   (c) a call the model says is valid succeeds, one it says is invalid fails with a status of a
//       rule it broke (several rules broken: any of their statuses); valid-mode results match the
//       reference within a per-dtype tolerance;
//   (d) a successful call writes only the bytes its outputs cover (row padding and guards untouched).
// A violation prints what was called and aborts, so libFuzzer keeps the input.
//
// Raw calls whose buffers would extend past the arena with no rule broken are skipped: reading
// them would be the caller's bug, not the library's.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "powergrad/powergrad_c.h"

namespace {

// ---- Adapting to the op signatures -------------------------------------------------------------
// The bucket ops may take the plan's size after the plan pointer (plan_bytes); the wrappers call
// whichever form the header declares, so the target builds against both.
template <class F>
struct Arity;
template <class R, class... A>
struct Arity<R(A...)> {
  static constexpr size_t value = sizeof...(A);
};
constexpr bool kOpsTakePlanBytes = Arity<decltype(pg_bucket_clip_norm)>::value == 9;

template <class F>
pg_status_t call_power(F* f, const void* plan, size_t plan_bytes, float beta, pg_norm_preserve_t pr,
                       pg_bucket_scope_t sc, void* ws, size_t wsb, int32_t* flags) {
  if constexpr (Arity<F>::value == 9) return f(plan, plan_bytes, beta, pr, sc, ws, wsb, flags, nullptr);
  else return (void)plan_bytes, f(plan, beta, pr, sc, ws, wsb, flags, nullptr);
}
template <class F>
pg_status_t call_clip(F* f, const void* plan, size_t plan_bytes, float max_norm, pg_bucket_scope_t sc, float* norms,
                      void* ws, size_t wsb, int32_t* flags) {
  if constexpr (Arity<F>::value == 9) return f(plan, plan_bytes, max_norm, sc, norms, ws, wsb, flags, nullptr);
  else return (void)plan_bytes, f(plan, max_norm, sc, norms, ws, wsb, flags, nullptr);
}
template <class F>
pg_status_t call_agc(F* f, const void* plan, size_t plan_bytes, float clip, float eps, float beta,
                     pg_norm_preserve_t pr, void* ws, size_t wsb, int32_t* flags) {
  if constexpr (Arity<F>::value == 10) return f(plan, plan_bytes, clip, eps, beta, pr, ws, wsb, flags, nullptr);
  else return (void)plan_bytes, f(plan, clip, eps, beta, pr, ws, wsb, flags, nullptr);
}
template <class F>
pg_status_t call_ws_bytes(F* f, const void* plan, size_t plan_bytes, size_t* bytes) {
  if constexpr (Arity<F>::value == 3) return f(plan, plan_bytes, bytes);
  else return (void)plan_bytes, f(plan, bytes);
}
template <class F>
pg_status_t call_upload(F* f, const void* plan, size_t plan_bytes, void* ws, size_t wsb) {
  if constexpr (Arity<F>::value == 5) return f(plan, plan_bytes, ws, wsb, nullptr);
  else return (void)plan_bytes, f(plan, ws, wsb, nullptr);
}

// ---- Input bytes ---------------------------------------------------------------------------------
// Sequential reads; an exhausted input reads as zeros (the valid, in-range choice of every pick).
struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t u8() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return u16() | (static_cast<uint32_t>(u16()) << 16); }
  uint64_t u64() { return u32() | (static_cast<uint64_t>(u32()) << 32); }
};

// ---- The arena -----------------------------------------------------------------------------------
constexpr size_t kArena = 16384;
constexpr size_t kGuard = 256;
constexpr uint8_t kGuardByte = 0xA5;
alignas(64) unsigned char g_mem[kGuard + kArena + kGuard];
unsigned char g_snap[sizeof g_mem];
uint8_t g_mask[kArena];  // 1: the call may write this byte
unsigned char* const A = g_mem + kGuard;

using u128 = unsigned __int128;
// Products of three int64 values overflow even 128 bits: saturate instead.
constexpr u128 kU128Max = ~static_cast<u128>(0);
u128 mul_sat(u128 a, u128 b) { return (b != 0 && a > kU128Max / b) ? kU128Max : a * b; }
u128 add_sat(u128 a, u128 b) { return a > kU128Max - b ? kU128Max : a + b; }

bool in_arena(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(A);
  return p && a >= b && a < b + kArena;
}
size_t off_of(const void* p) { return reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(A); }
// Whether [p, p + bytes) lies inside the arena (null pointers: trivially).
bool fits(const void* p, u128 bytes) { return !p || (in_arena(p) && add_sat(off_of(p), bytes) <= kArena); }

// Byte ranges, with the library's rule that a non-null pointer covers at least one byte.
struct Region {
  const void* p;
  u128 bytes;
  const char* name;
};
bool overlap(const Region& a, const Region& b) {
  if (!a.p || !b.p) return false;
  const u128 pa = reinterpret_cast<uintptr_t>(a.p), pb = reinterpret_cast<uintptr_t>(b.p);
  const u128 na = a.bytes ? a.bytes : 1, nb = b.bytes ? b.bytes : 1;
  return pa < add_sat(pb, nb) && pb < add_sat(pa, na);
}
// The same without the one-byte rule (the bucket ops' overlap of an output with a gradient).
bool overlap_exact(const void* a, u128 na, const void* b, u128 nb) {
  if (!a || !b || na == 0 || nb == 0) return false;
  const u128 pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < add_sat(pb, nb) && pb < add_sat(pa, na);
}

void allow(const void* p, u128 bytes) {
  if (!p || !in_arena(p)) return;
  const size_t o = off_of(p);
  const size_t e = static_cast<size_t>(add_sat(o, bytes) > kArena ? kArena : o + bytes);
  std::memset(g_mask + o, 1, e - o);
}

// ---- Reporting -----------------------------------------------------------------------------------
std::string g_log;  // the calls of this input so far, printed with a failure
void note(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void note(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  g_log += buf;
}
[[noreturn]] void oracle_failure(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] void oracle_failure(const char* fmt, ...) {
  std::fprintf(stderr, "\n==== powergrad C ABI contract violation ====\n%s\n--> ", g_log.c_str());
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::abort();
}

// ---- The contract model --------------------------------------------------------------------------
constexpr unsigned kAny = 1u << 15;  // any failure status is acceptable
unsigned bit(pg_status_t s) { return 1u << static_cast<int>(s); }

// What the model predicts: `must` = statuses of rules the call breaks (non-empty: it must fail with
// one of them); `may` = statuses of rules whose outcome the documents leave open (the call may
// succeed, or fail with one of them). `reads_ok`: every buffer the call may touch lies in the arena.
struct Expect {
  unsigned must = 0, may = 0;
  bool early = false;  // a rule broken that the library checks before reading any buffer
  bool reads_ok = true;
  std::string why;
  void rule(bool broken, pg_status_t s, const char* what, bool is_early = true) {
    if (!broken) return;
    must |= bit(s);
    early = early || is_early;
    why += what;
    why += "; ";
  }
  void open(bool cond, unsigned statuses, const char* what) {
    if (!cond) return;
    may |= statuses;
    why += "(may) ";
    why += what;
    why += "; ";
  }
  void touch(const void* p, u128 bytes) { reads_ok = reads_ok && fits(p, bytes); }
  // A buffer the call touches only once every check has passed.
  bool writes_ok = true;
  void write(const void* p, u128 bytes) { writes_ok = writes_ok && fits(p, bytes); }
  // Whether making the call is the caller's bug: a buffer past the arena that the library would
  // read during validation (no earlier rule stops it) or touch on success.
  bool skip() const { return (!reads_ok && !early) || (!must && !writes_ok); }
};

bool valid_status(int s) { return s >= PG_STATUS_SUCCESS && s <= PG_STATUS_INTERNAL_ERROR; }

void snapshot() { std::memcpy(g_snap, g_mem, sizeof g_mem); }

// (a), (b), (c) status part, (d). `expect` null: a valid-mode call (must succeed).
void check_outcome(const char* op, int st, const Expect* expect) {
  const char* msg = pg_last_error();
  if (!valid_status(st)) oracle_failure("%s returned %d, not a pg_status_t value", op, st);
  if (msg == nullptr) oracle_failure("%s: pg_last_error() is null", op);
  if (st == PG_STATUS_SUCCESS && msg[0] != '\0') oracle_failure("%s succeeded but pg_last_error() is \"%s\"", op, msg);
  if (st != PG_STATUS_SUCCESS && msg[0] == '\0') oracle_failure("%s failed (%d) with an empty pg_last_error()", op, st);
  for (size_t i = 0; i < kGuard; ++i)
    if (g_mem[i] != kGuardByte || g_mem[kGuard + kArena + i] != kGuardByte)
      oracle_failure("%s wrote into a guard zone around the arena", op);
  if (st != PG_STATUS_SUCCESS) {
    if (std::memcmp(g_mem, g_snap, sizeof g_mem) != 0) {
      size_t i = 0;
      while (g_mem[i] == g_snap[i]) ++i;
      oracle_failure("%s failed (%d: %s) but changed arena byte %zd", op, st, msg,
                     static_cast<ptrdiff_t>(i) - static_cast<ptrdiff_t>(kGuard));
    }
    if (!expect) oracle_failure("%s with valid arguments failed: %d (%s)", op, st, msg);
    const unsigned allowed = expect->must | expect->may;
    if (allowed == 0) oracle_failure("%s failed (%d: %s) but breaks no documented rule", op, st, msg);
    if (!(allowed & kAny) && !(allowed & bit(static_cast<pg_status_t>(st))))
      oracle_failure("%s failed with status %d (%s); the rules it breaks give statuses 0x%x: %s", op, st, msg, allowed,
                     expect->why.c_str());
    note("   -> %d (%s)\n", st, msg);
    return;
  }
  if (expect && expect->must)
    oracle_failure("%s succeeded but breaks: %s (statuses 0x%x)", op, expect->why.c_str(), expect->must);
  for (size_t i = 0; i < kArena; ++i)
    if (!g_mask[i] && A[i] != g_snap[kGuard + i])
      oracle_failure("%s succeeded but wrote arena byte %zu, which no output covers", op, i);
  note("   -> success\n");
}

// ---- Element types -------------------------------------------------------------------------------
size_t elem_size(int dtype) { return dtype == PG_DTYPE_FLOAT32 ? 4 : 2; }

double decode(int dtype, const void* base, int64_t i) {
  if (dtype == PG_DTYPE_FLOAT32) {
    float f;
    std::memcpy(&f, static_cast<const unsigned char*>(base) + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, static_cast<const unsigned char*>(base) + 2 * i, 2);
  if (dtype == PG_DTYPE_BFLOAT16) {
    const uint32_t b = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  }
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v;
  if (e == 0) v = std::ldexp(m, -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(1024 + m, e - 25);
  return sign ? -v : v;
}

// Stores v, which the caller guarantees is exactly representable in the dtype (grid values, +-inf).
void store_exact(int dtype, void* base, int64_t i, double v) {
  const float f = static_cast<float>(v);
  uint32_t b;
  std::memcpy(&b, &f, 4);
  unsigned char* at = static_cast<unsigned char*>(base);
  if (dtype == PG_DTYPE_FLOAT32) {
    std::memcpy(at + 4 * i, &f, 4);
    return;
  }
  uint16_t h;
  if (dtype == PG_DTYPE_BFLOAT16) {
    h = static_cast<uint16_t>(b >> 16);
  } else {
    const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000);
    const int e = static_cast<int>((b >> 23) & 255);
    if (e == 255) h = static_cast<uint16_t>(sign | 0x7C00);
    else if (e == 0) h = sign;
    else h = static_cast<uint16_t>(sign | ((e - 127 + 15) << 10) | ((b >> 13) & 1023));
  }
  std::memcpy(at + 2 * i, &h, 2);
}

// Half of one unit in the last place of the dtype, relative, and the smallest spacing (absolute).
double rel_ulp(int dtype) { return dtype == PG_DTYPE_FLOAT32 ? 0x1p-24 : dtype == PG_DTYPE_FLOAT16 ? 0x1p-11 : 0x1p-8; }
double min_step(int dtype) { return dtype == PG_DTYPE_FLOAT32 ? 0x1p-149 : dtype == PG_DTYPE_FLOAT16 ? 0x1p-24 : 0x1p-133; }

bool close(double got, double ref, double tol) {
  if (std::isnan(ref)) return std::isnan(got);
  if (std::isinf(ref)) return got == ref;
  return std::fabs(got - ref) <= tol;
}

// ---- Picks ---------------------------------------------------------------------------------------
template <class E>
void set_enum(E& e, int v) {
  static_assert(sizeof(E) == sizeof(int), "C enums are int-sized");
  std::memcpy(&e, &v, sizeof v);
}
template <class E>
int get_enum(const E& e) {
  int v;
  std::memcpy(&v, &e, sizeof v);
  return v;
}

int pick_enum(Reader& r, int count) {
  const uint8_t b = r.u8();
  if (b < 232) return b % count;
  static const int odd[] = {-1, 3, 4, 100, INT32_MIN, INT32_MAX, 2, 1};
  const int v = odd[b % 8];
  return v == 2 || v == 1 ? count + v : v;
}

size_t pick_struct_size(Reader& r, size_t right) {
  const uint8_t b = r.u8();
  if (b < 244) return right;
  static const size_t odd[] = {0, 8, SIZE_MAX, 4096};
  return b % 2 ? right + odd[b % 4] : right - 8;
}

int64_t pick_size(Reader& r) {
  const uint8_t b = r.u8();
  if (b < 208) return b % 12;
  static const int64_t odd[] = {-1, INT64_MIN, INT64_MAX, int64_t(1) << 31, int64_t(1) << 32, int64_t(1) << 40,
                                int64_t(1) << 62, (int64_t(1) << 62) + 1, -(int64_t(1) << 40), 1000, 4097, 0};
  const int64_t v = odd[b % 12];
  return v == 0 ? static_cast<int64_t>(r.u64()) : v;
}

// A row stride: mostly 0 (= cols) or cols plus a little padding.
int64_t pick_ld(Reader& r, int64_t cols) {
  const uint8_t b = r.u8();
  if (b < 96) return 0;
  if (b < 208 && cols >= 0 && cols < 1000) return cols + b % 4;
  if (b < 224 && cols > 0 && cols < 1000) return cols - 1;
  return pick_size(r);
}

float pick_float(Reader& r, const float* usual, size_t n_usual) {
  const uint8_t b = r.u8();
  if (b < 200) return usual[b % n_usual];
  static const float odd[] = {NAN, INFINITY, -INFINITY, -1.f, 0.f, -0.f, 3.4e38f, 1e-40f, 1.f, 0.999999f, -1e-30f};
  if (b < 200 + 11 * 4) return odd[(b - 200) % 11];
  const uint32_t bits = r.u32();
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
const float kAlphas[] = {1.f, 0.5f, 0.25f, 0.f, 2.f, 0.75f, 1.5f};
const float kSmooth[] = {0.f, 0.1f, 0.25f, 0.f};
const float kScales[] = {1.f, 0.5f, 2.f, 3.f};
const float kPositive[] = {1.f, 0.5f, 4.f, 0.01f, 100.f};

// Recently used pointers, so that arguments alias each other exactly as well as partially.
void* g_recent[8];
unsigned g_recent_n = 0;

void* pick_ptr(Reader& r, size_t align) {
  const uint8_t b = r.u8();
  void* p;
  if (b % 8 == 0) return nullptr;
  if (b % 8 == 1 && g_recent_n > 0) {
    p = g_recent[r.u8() % (g_recent_n < 8 ? g_recent_n : 8)];
    const size_t o = off_of(p) & ~(align - 1);
    p = A + o;
  } else {
    size_t o = r.u16() % kArena;
    o &= ~(align - 1);
    p = A + o;
  }
  g_recent[g_recent_n++ % 8] = p;
  return p;
}

// A sequential allocator for valid-mode buffers: disjoint, with fuzzer-chosen gaps.
struct Alloc {
  size_t cur;
  bool ok = true;
  explicit Alloc(Reader& r) : cur((r.u8() % 16) * 4) {}
  void* take(Reader& r, size_t bytes, size_t align) {
    size_t o = cur + (r.u8() % 4) * align;
    o = (o + align - 1) / align * align;
    if (o + bytes + 64 > kArena) {
      ok = false;
      return A;
    }
    cur = o + (bytes ? bytes : 1);
    return A + o;
  }
};

// ---- Cross-entropy reference (docs/design.md §2.1, §2.3) -------------------------------------------
struct XentRef {
  std::vector<double> loss_row, lse, lse_a, grad, gtol;  // grad/gtol [rows x C]
  std::vector<double> loss_tol_row;
  double loss = 0, loss_tol = 0;
  int64_t n_valid = 0;
};

// z: [rows x C] decoded logits; q: target distribution rows (already smoothed), ignored rows flagged.
// g_row: the upstream factor before the MEAN division.
XentRef xent_reference(int64_t rows, int64_t C, const std::vector<double>& z, const std::vector<double>& q,
                       const std::vector<bool>& ignored, double alpha, int reduction,
                       const std::vector<double>& g_row, int dtype) {
  XentRef ref;
  ref.loss_row.assign(rows, 0);
  ref.loss_tol_row.assign(rows, 0);
  ref.lse.assign(rows, 0);
  ref.lse_a.assign(rows, 0);
  ref.grad.assign(rows * C, 0);
  ref.gtol.assign(rows * C, 0);
  for (int64_t r = 0; r < rows; ++r) ref.n_valid += !ignored[r];
  for (int64_t r = 0; r < rows; ++r) {
    const double* zr = &z[r * C];
    const double* qr = &q[r * C];
    double m = -INFINITY;
    for (int64_t j = 0; j < C; ++j) m = std::fmax(m, zr[j]);
    double s = 0, sa = 0, t = 0, tabs = 0;
    int64_t unmasked = 0;
    for (int64_t j = 0; j < C; ++j) {
      if (zr[j] == -INFINITY) continue;
      ++unmasked;
      s += std::exp(zr[j] - m);
      sa += std::exp(alpha * (zr[j] - m));
    }
    double A = 0;  // the target mass: a dense row need not sum to 1 (docs/design.md §2.1, §2.5)
    for (int64_t j = 0; j < C; ++j)
      if (qr[j] != 0) {
        t += qr[j] * zr[j];
        tabs += std::fabs(qr[j] * zr[j]);
        A += qr[j];
      }
    ref.lse[r] = m + std::log(s);
    ref.lse_a[r] = alpha == 0 ? std::log(static_cast<double>(unmasked)) : alpha * m + std::log(sa);
    ref.loss_row[r] = ignored[r] ? 0 : A * ref.lse[r] - t;
    ref.loss_tol_row[r] = ignored[r] ? 0 : 3e-5 * (A * std::fabs(ref.lse[r]) + tabs + 1);
    double g = g_row[r];
    if (reduction == PG_REDUCTION_MEAN) g = ref.n_valid ? g / static_cast<double>(ref.n_valid) : 0;
    for (int64_t j = 0; j < C; ++j) {
      double pa;
      if (zr[j] == -INFINITY) pa = 0;
      else if (alpha == 0) pa = 1.0 / static_cast<double>(unmasked);
      else pa = std::exp(alpha * zr[j] - ref.lse_a[r]);
      const double v = ignored[r] ? 0 : g * (A * pa - qr[j]);
      ref.grad[r * C + j] = v;
      ref.gtol[r * C + j] = std::fabs(g) * (3e-5 * (A * pa + std::fabs(qr[j])) + 1e-7) + std::fabs(v) * rel_ulp(dtype) +
                            min_step(dtype);
    }
  }
  double sum = 0, tol = 0;
  for (int64_t r = 0; r < rows; ++r) {
    sum += ref.loss_row[r];
    tol += ref.loss_tol_row[r];
  }
  if (reduction == PG_REDUCTION_MEAN) {
    ref.loss = ref.n_valid ? sum / static_cast<double>(ref.n_valid) : 0;
    ref.loss_tol = ref.n_valid ? tol / static_cast<double>(ref.n_valid) : 0;
  } else {
    ref.loss = sum;
    ref.loss_tol = tol;
  }
  return ref;
}

// A valid cross-entropy problem laid out in the arena, with its decoded inputs.
struct ValidXent {
  pg_xent_problem_t pb{};
  int dtype = 0, kind = 0, reduction = 0;
  int64_t rows = 0, C = 0, ld = 0, tld = 0;
  double alpha = 1, eps = 0;
  std::vector<double> z, q;
  std::vector<bool> ignored;
  std::vector<int64_t> y;
  void* logits = nullptr;
  void* targets = nullptr;
};

double grid(Reader& r, int range) { return static_cast<double>(static_cast<int>(r.u8() % (2 * range + 1)) - range) / 8.0; }

bool make_valid_xent(Reader& r, Alloc& al, ValidXent& v, bool allow_masks, bool allow_smoothing) {
  v.dtype = r.u8() % 3;
  v.kind = r.u8() % 3;
  v.reduction = r.u8() % 3;
  v.rows = r.u8() % 7;
  v.C = 1 + r.u8() % 40;
  v.ld = v.C + r.u8() % 3;
  v.alpha = kAlphas[r.u8() % 7];
  v.eps = allow_smoothing ? kSmooth[r.u8() % 4] : 0.0;
  const int64_t ignore_index = (r.u8() % 2) ? -100 : 1;
  const size_t es = elem_size(v.dtype);
  // At least one row of room, so that a shard's pointer (logits + col_offset) stays inside its
  // own buffer when the batch is empty.
  const int64_t room = v.rows > 0 ? v.rows : 1;
  v.logits = al.take(r, static_cast<size_t>(room * v.ld) * es, 16);
  v.z.assign(v.rows * v.C, 0);
  v.q.assign(v.rows * v.C, 0);
  v.ignored.assign(v.rows, false);
  v.y.assign(v.rows, 0);
  if (v.kind == PG_TARGET_DENSE) {
    v.tld = v.C + r.u8() % 2;
    v.targets = al.take(r, static_cast<size_t>(room * v.tld) * es, 16);
  } else {
    v.targets = al.take(r, static_cast<size_t>(v.rows) * (v.kind == PG_TARGET_INDEX_INT32 ? 4 : 8), 8);
  }
  if (!al.ok) return false;
  for (int64_t i = 0; i < v.rows; ++i) {
    if (v.kind != PG_TARGET_DENSE) {
      const uint8_t b = r.u8();
      v.y[i] = b % 8 == 7 ? ignore_index : (b / 8) % v.C;
      v.ignored[i] = v.y[i] == ignore_index;
      if (v.kind == PG_TARGET_INDEX_INT32) {
        const int32_t y32 = static_cast<int32_t>(v.y[i]);
        std::memcpy(static_cast<unsigned char*>(v.targets) + 4 * i, &y32, 4);
      } else {
        std::memcpy(static_cast<unsigned char*>(v.targets) + 8 * i, &v.y[i], 8);
      }
    }
    for (int64_t j = 0; j < v.C; ++j) {
      double zv = grid(r, 64);
      const bool mask = allow_masks && v.eps == 0 && v.kind != PG_TARGET_DENSE && j != 0 && j != v.y[i] && r.u8() % 8 == 0;
      if (mask) zv = -INFINITY;
      store_exact(v.dtype, v.logits, i * v.ld + j, zv);
      v.z[i * v.C + j] = zv;
      double qv;
      if (v.kind == PG_TARGET_DENSE) {
        const double d = (r.u8() % 17) / 64.0;
        store_exact(v.dtype, v.targets, i * v.tld + j, d);
        qv = (1 - v.eps) * d + v.eps / static_cast<double>(v.C);
      } else {
        qv = (1 - v.eps) * (j == v.y[i] ? 1.0 : 0.0) + v.eps / static_cast<double>(v.C);
      }
      v.q[i * v.C + j] = qv;
    }
  }
  pg_xent_problem_t& p = v.pb;
  p.struct_size = sizeof p;
  set_enum(p.device, PG_DEVICE_HOST);
  set_enum(p.dtype, v.dtype);
  p.logits = v.logits;
  p.rows = v.rows;
  p.cols = v.C;
  p.ld = (v.ld == v.C && r.u8() % 2) ? 0 : v.ld;
  set_enum(p.target_kind, v.kind);
  p.targets = v.targets;
  p.target_ld = v.kind == PG_TARGET_DENSE ? v.tld : 0;
  p.ignore_index = ignore_index;
  p.alpha = static_cast<float>(v.alpha);
  p.label_smoothing = static_cast<float>(v.eps);
  set_enum(p.reduction, v.reduction);
  return true;
}

void check_floats(const char* what, const float* got, const std::vector<double>& ref, const std::vector<double>& tol) {
  for (size_t i = 0; i < ref.size(); ++i)
    if (!close(got[i], ref[i], tol[i]))
      oracle_failure("%s[%zu] = %.9g, reference %.9g (tolerance %.3g)", what, i, static_cast<double>(got[i]), ref[i],
                     tol[i]);
}
std::vector<double> lse_tols(const std::vector<double>& v) {
  std::vector<double> t(v.size());
  for (size_t i = 0; i < v.size(); ++i) t[i] = 3e-5 * (std::fabs(v[i]) + 1);
  return t;
}

void check_grad(const ValidXent& v, const XentRef& ref, const void* d, int64_t ldd, int64_t col0, int64_t cols) {
  for (int64_t i = 0; i < v.rows; ++i)
    for (int64_t j = col0; j < col0 + cols; ++j) {
      const double got = decode(v.dtype, d, i * ldd + j);
      if (!close(got, ref.grad[i * v.C + j], ref.gtol[i * v.C + j]))
        oracle_failure("dlogits[%lld][%lld] = %.9g, reference %.9g (tolerance %.3g, dtype %d)",
                       static_cast<long long>(i), static_cast<long long>(j), got, ref.grad[i * v.C + j],
                       ref.gtol[i * v.C + j], v.dtype);
    }
}

void allow_grad(const void* d, int64_t rows, int64_t cols, int64_t ldd, size_t es) {
  if (!d || !in_arena(d) || rows <= 0 || cols <= 0 || ldd < cols) return;
  for (int64_t i = 0; i < rows; ++i) {
    const u128 o = off_of(d) + static_cast<u128>(i) * static_cast<u128>(ldd) * es;
    if (o >= kArena) break;
    allow(A + static_cast<size_t>(o), static_cast<u128>(cols) * es);
  }
}

// Upstream of a valid call: none, a scale, or a scale and values.
struct ValidUp {
  pg_upstream_t up{};
  bool present = false;
  std::vector<double> g_row;
};
bool make_valid_upstream(Reader& r, Alloc& al, const ValidXent& v, ValidUp& u) {
  u.g_row.assign(v.rows, 1.0);
  const uint8_t b = r.u8() % 3;
  if (b == 0) return true;
  u.present = true;
  u.up.struct_size = sizeof u.up;
  u.up.scale = kScales[r.u8() % 4];
  for (auto& g : u.g_row) g = u.up.scale;
  if (b == 2) {
    const int64_t n = v.reduction == PG_REDUCTION_NONE ? v.rows : 1;
    float* vals = static_cast<float*>(al.take(r, static_cast<size_t>(n) * 4, 4));
    if (!al.ok) return false;
    static const float kv[] = {1.f, 0.5f, 2.f, -1.f};
    for (int64_t i = 0; i < n; ++i) vals[i] = kv[r.u8() % 4];
    for (int64_t i = 0; i < v.rows; ++i) u.g_row[i] = static_cast<double>(u.up.scale) * vals[n == 1 ? 0 : i];
    u.up.values = vals;
  }
  return true;
}

// forward_backward or backward (op 0 / 1) with valid arguments, checked against the reference.
void valid_forward_backward(Reader& r, bool backward) {
  Alloc al(r);
  ValidXent v;
  ValidUp u;
  if (!make_valid_xent(r, al, v, true, true) || !make_valid_upstream(r, al, v, u)) return;
  const size_t es = elem_size(v.dtype);
  const bool in_place = r.u8() % 3 == 0;
  const int64_t ldd = in_place ? v.ld : v.C + r.u8() % 3;
  const bool want_grad = backward || r.u8() % 4 != 0;
  void* d = nullptr;
  if (want_grad) d = in_place ? v.logits : al.take(r, static_cast<size_t>(v.rows * ldd) * es, 16);
  const int64_t nloss = v.reduction == PG_REDUCTION_NONE ? v.rows : 1;
  const uint8_t outs = r.u8();
  float* loss = (!backward && outs & 1) ? static_cast<float*>(al.take(r, static_cast<size_t>(nloss) * 4, 4)) : nullptr;
  float* lse = (!backward && outs & 2) ? static_cast<float*>(al.take(r, static_cast<size_t>(v.rows) * 4, 4)) : nullptr;
  float* lsea = (!backward && outs & 4) ? static_cast<float*>(al.take(r, static_cast<size_t>(v.rows) * 4, 4)) : nullptr;
  float* saved = (backward && outs & 8) ? static_cast<float*>(al.take(r, static_cast<size_t>(v.rows) * 4, 4)) : nullptr;
  if (!al.ok) return;
  const XentRef ref = xent_reference(v.rows, v.C, v.z, v.q, v.ignored, v.alpha, v.reduction, u.g_row, v.dtype);
  if (saved)
    for (int64_t i = 0; i < v.rows; ++i) saved[i] = static_cast<float>(ref.lse_a[i]);
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  if (d) allow_grad(d, v.rows, v.C, ldd, es);
  allow(loss, (v.rows || nloss == 1 ? nloss : 0) * 4);
  allow(lse, v.rows * 4);
  allow(lsea, v.rows * 4);
  int st;
  const int64_t ld_arg = (!in_place && r.u8() % 4 == 0 && ldd == v.ld) ? 0 : ldd;
  if (backward) {
    note("valid xent_backward dtype %d kind %d red %d rows %lld C %lld ld %lld ldd %lld alpha %g eps %g in_place %d saved %d\n",
         v.dtype, v.kind, v.reduction, (long long)v.rows, (long long)v.C, (long long)v.ld, (long long)ldd, v.alpha,
         v.eps, in_place, saved != nullptr);
    st = pg_xent_backward(&v.pb, u.present ? &u.up : nullptr, saved, d, ld_arg, nullptr, 0, nullptr);
  } else {
    pg_xent_outputs_t o{};
    o.struct_size = sizeof o;
    o.loss = loss;
    o.lse = lse;
    o.lse_alpha = lsea;
    o.dlogits = d;
    o.ld_dlogits = ld_arg;
    note("valid xent_forward_backward dtype %d kind %d red %d rows %lld C %lld ld %lld ldd %lld alpha %g eps %g in_place %d outs %d\n",
         v.dtype, v.kind, v.reduction, (long long)v.rows, (long long)v.C, (long long)v.ld, (long long)ldd, v.alpha,
         v.eps, in_place, outs & 7);
    st = pg_xent_forward_backward(&v.pb, u.present ? &u.up : nullptr, &o, nullptr, 0, nullptr);
  }
  check_outcome(backward ? "pg_xent_backward" : "pg_xent_forward_backward", st, nullptr);
  if (d) check_grad(v, ref, d, ldd, 0, v.C);
  if (loss) {
    if (v.reduction == PG_REDUCTION_NONE) check_floats("loss", loss, ref.loss_row, ref.loss_tol_row);
    else check_floats("loss", loss, {ref.loss}, {ref.loss_tol});
  }
  if (lse) check_floats("lse", lse, ref.lse, lse_tols(ref.lse));
  if (lsea) check_floats("lse_alpha", lsea, ref.lse_a, lse_tols(ref.lse_a));
}

// The hook form with an exactly representable incoming gradient G = s_r (p - q), p and q on a grid
// of 1/64, s_r a power of two (or 0), so that the recovered p is exact in fp32 and only the PGT map
// contributes rounding error.
void valid_hook(Reader& r) {
  Alloc al(r);
  ValidXent v;
  if (!make_valid_xent(r, al, v, false, false)) return;
  const size_t es = elem_size(v.dtype);
  static const float kPow2[] = {1.f, 0.5f, 2.f, 4.f};
  const float scale = kPow2[r.u8() % 4];
  float* row_scale = nullptr;
  if (r.u8() % 2) {
    row_scale = static_cast<float*>(al.take(r, static_cast<size_t>(v.rows) * 4, 4));
    if (!al.ok) return;
    static const float kRs[] = {1.f, 0.5f, 2.f, 0.f};
    for (int64_t i = 0; i < v.rows; ++i) row_scale[i] = kRs[r.u8() % 4];
  }
  std::vector<double> p(v.rows * v.C);
  for (int64_t i = 0; i < v.rows; ++i) {
    const double s = static_cast<double>(scale) * (row_scale ? row_scale[i] : 1.f);
    for (int64_t j = 0; j < v.C; ++j) {
      double pv = (r.u8() % 65) / 64.0;
      if (j == 0 && pv == 0) pv = 1.0 / 64;  // at least one unmasked class per row
      p[i * v.C + j] = pv;
      store_exact(v.dtype, v.logits, i * v.ld + j, s * (pv - v.q[i * v.C + j]));
    }
  }
  const bool in_place = r.u8() % 3 == 0;
  const int64_t ldd = in_place ? v.ld : v.C + r.u8() % 3;
  void* out = in_place ? v.logits : al.take(r, static_cast<size_t>(v.rows * ldd) * es, 16);
  if (!al.ok) return;
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow_grad(out, v.rows, v.C, ldd, es);
  note("valid xent_hook dtype %d kind %d rows %lld C %lld ld %lld ldd %lld alpha %g scale %g row_scale %d in_place %d\n",
       v.dtype, v.kind, (long long)v.rows, (long long)v.C, (long long)v.ld, (long long)ldd, v.alpha,
       static_cast<double>(scale), row_scale != nullptr, in_place);
  const int st = pg_xent_hook(&v.pb, scale, row_scale, out, ldd, nullptr);
  check_outcome("pg_xent_hook", st, nullptr);
  for (int64_t i = 0; i < v.rows; ++i) {
    const double s = static_cast<double>(scale) * (row_scale ? row_scale[i] : 1.f);
    double sum = 0;
    for (int64_t j = 0; j < v.C; ++j)
      if (p[i * v.C + j] > 0) sum += std::pow(p[i * v.C + j], v.alpha);
    for (int64_t j = 0; j < v.C; ++j) {
      const double pj = p[i * v.C + j];
      const double pa = pj > 0 ? std::pow(pj, v.alpha) / sum : 0;
      const double qj = v.q[i * v.C + j];
      const double ref = (v.ignored[i] || s == 0) ? 0 : s * (pa - qj);
      const double tol = s * (3e-5 * (pa + qj) + 1e-7) + std::fabs(ref) * rel_ulp(v.dtype) + min_step(v.dtype);
      const double got = decode(v.dtype, out, i * ldd + j);
      if (!close(got, ref, tol))
        oracle_failure("hook out[%lld][%lld] = %.9g, reference %.9g (tolerance %.3g)", (long long)i, (long long)j, got,
                       ref, tol);
    }
  }
}

// The split form over 1-3 column shards: shard_stats per shard, merge_stats, shard_apply per shard;
// statistics, merged statistics, loss, lse, lse_alpha and every gradient column against the
// reference of the unsharded row.
void valid_split(Reader& r) {
  Alloc al(r);
  ValidXent v;
  ValidUp u;
  if (!make_valid_xent(r, al, v, true, true) || !make_valid_upstream(r, al, v, u)) return;
  const size_t es = elem_size(v.dtype);
  int64_t K = 1 + r.u8() % 3;
  if (K > v.C) K = v.C;
  std::vector<int64_t> start(K + 1, 0);
  start[K] = v.C;
  for (int64_t k = 1; k < K; ++k) {
    // Strictly increasing boundaries inside [1, C - 1].
    const int64_t lo = start[k - 1] + 1, hi = v.C - (K - k);
    start[k] = lo + r.u8() % (hi - lo + 1);
  }
  const int64_t ldd = v.C + r.u8() % 3;
  constexpr size_t kStatsBytes = sizeof(pg_row_stats_t);  // 32 (docs/design.md §2.3)
  static_assert(kStatsBytes == 32, "pg_row_stats_t is 32 bytes");
  auto* parts = static_cast<pg_row_stats_t*>(al.take(r, static_cast<size_t>(K * v.rows) * kStatsBytes, 16));
  auto* merged = static_cast<pg_row_stats_t*>(al.take(r, static_cast<size_t>(v.rows) * kStatsBytes, 16));
  void* d = al.take(r, static_cast<size_t>((v.rows > 0 ? v.rows : 1) * ldd) * es, 16);
  const int64_t nloss = v.reduction == PG_REDUCTION_NONE ? v.rows : 1;
  auto* loss = static_cast<float*>(al.take(r, static_cast<size_t>(nloss) * 4, 4));
  auto* lse = static_cast<float*>(al.take(r, static_cast<size_t>(v.rows) * 4, 4));
  auto* lsea = static_cast<float*>(al.take(r, static_cast<size_t>(v.rows) * 4, 4));
  if (!al.ok) return;
  const XentRef ref = xent_reference(v.rows, v.C, v.z, v.q, v.ignored, v.alpha, v.reduction, u.g_row, v.dtype);
  note("valid split dtype %d kind %d red %d rows %lld C %lld ld %lld shards %lld alpha %g eps %g\n", v.dtype, v.kind,
       v.reduction, (long long)v.rows, (long long)v.C, (long long)v.ld, (long long)K, v.alpha, v.eps);
  auto shard = [&](int64_t k) {
    pg_xent_problem_t p = v.pb;
    p.logits = static_cast<const unsigned char*>(v.logits) + start[k] * es;
    p.ld = v.ld;
    p.cols = start[k + 1] - start[k];
    p.col_offset = start[k];
    p.total_cols = v.C;
    if (v.kind == PG_TARGET_DENSE) {
      p.targets = static_cast<const unsigned char*>(v.targets) + start[k] * es;
      p.target_ld = v.tld;
    }
    return p;
  };
  for (int64_t k = 0; k < K; ++k) {
    const pg_xent_problem_t p = shard(k);
    snapshot();
    std::memset(g_mask, 0, sizeof g_mask);
    allow(parts + k * v.rows, v.rows * kStatsBytes);
    note("  shard_stats %lld: cols [%lld, %lld)\n", (long long)k, (long long)start[k], (long long)start[k + 1]);
    check_outcome("pg_xent_shard_stats", pg_xent_shard_stats(&p, parts + k * v.rows, nullptr), nullptr);
    for (int64_t i = 0; i < v.rows; ++i) {
      double m = -INFINITY, s = 0, sa = 0, t = 0, tabs = 0, a = 0;
      int64_t am = start[k];  // the first maximum; the shard's first column when all are masked
      for (int64_t j = start[k]; j < start[k + 1]; ++j)
        if (v.z[i * v.C + j] > m) {
          m = v.z[i * v.C + j];
          am = j;
        }
      for (int64_t j = start[k]; j < start[k + 1]; ++j) {
        const double zj = v.z[i * v.C + j], qj = v.q[i * v.C + j];
        if (zj != -INFINITY) {
          s += std::exp(zj - m);
          sa += std::exp(v.alpha * (zj - m));
        }
        if (qj != 0) {
          t += qj * zj;
          tabs += std::fabs(qj * zj);
          a += qj;
        }
      }
      const pg_row_stats_t& g = parts[k * v.rows + i];
      // Ignored rows: t and a are not part of the contract (their loss is 0 whatever they are).
      if (static_cast<double>(g.m) != m || !close(g.s, s, 3e-5 * s) || !close(g.sa, sa, 3e-5 * sa) ||
          (!v.ignored[i] && !close(g.t, t, 3e-5 * (tabs + 1))) || (!v.ignored[i] && !close(g.a, a, 3e-5 * (a + 1))) ||
          (std::isfinite(m) && g.argmax != am))
        oracle_failure("shard %lld row %lld stats (m %.9g s %.9g sa %.9g t %.9g a %.9g argmax %lld), reference (%.9g "
                       "%.9g %.9g %.9g %.9g %lld)",
                       (long long)k, (long long)i, (double)g.m, (double)g.s, (double)g.sa, (double)g.t, (double)g.a,
                       (long long)g.argmax, m, s, sa, t, a, (long long)am);
    }
  }
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow(merged, v.rows * kStatsBytes);
  note("  merge_stats shards %lld rows %lld\n", (long long)K, (long long)v.rows);
  check_outcome("pg_xent_merge_stats",
                pg_xent_merge_stats(PG_DEVICE_HOST, parts, K, v.rows, static_cast<float>(v.alpha), merged, nullptr),
                nullptr);
  for (int64_t k = 0; k < K; ++k) {
    const pg_xent_problem_t p = shard(k);
    pg_xent_outputs_t o{};
    o.struct_size = sizeof o;
    o.loss = loss;
    o.lse = lse;
    o.lse_alpha = lsea;
    o.dlogits = static_cast<unsigned char*>(d) + start[k] * es;
    o.ld_dlogits = ldd;
    snapshot();
    std::memset(g_mask, 0, sizeof g_mask);
    allow_grad(o.dlogits, v.rows, p.cols, ldd, es);
    allow(loss, (v.rows || nloss == 1 ? nloss : 0) * 4);
    allow(lse, v.rows * 4);
    allow(lsea, v.rows * 4);
    note("  shard_apply %lld\n", (long long)k);
    check_outcome("pg_xent_shard_apply",
                  pg_xent_shard_apply(&p, merged, u.present ? &u.up : nullptr, &o, nullptr, 0, nullptr), nullptr);
    if (v.reduction == PG_REDUCTION_NONE) check_floats("loss", loss, ref.loss_row, ref.loss_tol_row);
    else check_floats("loss", loss, {ref.loss}, {ref.loss_tol});
    check_floats("lse", lse, ref.lse, lse_tols(ref.lse));
    check_floats("lse_alpha", lsea, ref.lse_a, lse_tols(ref.lse_a));
  }
  check_grad(v, ref, d, ldd, 0, v.C);
}

// ---- Raw cross-entropy calls -----------------------------------------------------------------------
enum XentOp { kFB, kBackward, kHook, kStats, kApply };

struct RawXent {
  pg_xent_problem_t pb{};
  pg_upstream_t up{};
  bool up_present = false;
  pg_xent_outputs_t out{};
  bool out_present = true;
  bool pb_present = true;
  void* grad = nullptr;  // backward dlogits / hook out
  int64_t ld_grad = 0;
  const float* saved = nullptr;
  float hook_scale = 1.f;
  const float* row_scale = nullptr;
  void* stats = nullptr;  // shard_stats out / shard_apply merged
};

size_t target_align(int kind) { return kind == PG_TARGET_INDEX_INT32 ? 4 : 8; }

void decode_raw_xent(Reader& r, XentOp op, RawXent& x) {
  pg_xent_problem_t& p = x.pb;
  x.pb_present = r.u8() < 250;
  p.struct_size = pick_struct_size(r, sizeof p);
  set_enum(p.device, r.u8() < 244 ? 0 : pick_enum(r, 2));
  const int dt = pick_enum(r, 3), tk = pick_enum(r, 3), red = pick_enum(r, 3);
  set_enum(p.dtype, dt);
  set_enum(p.target_kind, tk);
  set_enum(p.reduction, red);
  const size_t es = (dt == 1 || dt == 2) ? 2 : 4;
  p.rows = pick_size(r);
  p.cols = pick_size(r);
  if (p.cols == 0 && r.u8() % 2) p.cols = 1 + r.u8() % 40;
  p.ld = pick_ld(r, p.cols);
  p.logits = pick_ptr(r, es);
  p.targets = pick_ptr(r, tk == PG_TARGET_DENSE ? es : target_align(tk));
  p.target_ld = tk == PG_TARGET_DENSE ? pick_ld(r, p.cols) : (r.u8() < 240 ? 0 : pick_size(r));
  static const int64_t kIgnore[] = {-100, -1, 0, 3};
  p.ignore_index = r.u8() < 240 ? kIgnore[r.u8() % 4] : static_cast<int64_t>(r.u64());
  p.alpha = pick_float(r, kAlphas, 7);
  p.label_smoothing = pick_float(r, kSmooth, 4);
  if (r.u8() >= 224) {
    p.col_offset = pick_size(r);
    p.total_cols = pick_size(r);
  }
  p.bad_target_count = r.u8() >= 240 ? static_cast<int32_t*>(pick_ptr(r, 4)) : nullptr;
  // Class targets that are mostly in range, so that calls get past the target scan.
  if (p.targets && (tk == PG_TARGET_INDEX_INT32 || tk == PG_TARGET_INDEX_INT64) && r.u8() % 2 && p.rows > 0 &&
      p.rows < 64 && p.cols > 0 && p.cols < 1000) {
    const size_t ts = tk == PG_TARGET_INDEX_INT32 ? 4 : 8;
    if (fits(p.targets, static_cast<u128>(p.rows) * ts)) {
      const int64_t total = p.total_cols > 0 ? p.total_cols : p.cols;
      for (int64_t i = 0; i < p.rows; ++i) {
        const uint8_t b = r.u8();
        const int64_t y = b == 255 ? p.ignore_index : static_cast<int64_t>(b % total);
        unsigned char* at = static_cast<unsigned char*>(const_cast<void*>(p.targets)) + i * ts;
        if (ts == 4) {
          const int32_t y32 = static_cast<int32_t>(y);
          std::memcpy(at, &y32, 4);
        } else {
          std::memcpy(at, &y, 8);
        }
      }
    }
  }
  if (op == kFB || op == kBackward || op == kApply) {
    x.up_present = r.u8() % 2;
    x.up.struct_size = pick_struct_size(r, sizeof x.up);
    x.up.scale = pick_float(r, kScales, 4);
    x.up.values = static_cast<const float*>(pick_ptr(r, 4));
  }
  if (op == kFB || op == kApply) {
    x.out_present = r.u8() < 250;
    pg_xent_outputs_t& o = x.out;
    o.struct_size = pick_struct_size(r, sizeof o);
    o.loss = static_cast<float*>(pick_ptr(r, 4));
    o.lse = static_cast<float*>(pick_ptr(r, 4));
    o.lse_alpha = static_cast<float*>(pick_ptr(r, 4));
    o.dlogits = r.u8() % 4 == 0 ? const_cast<void*>(p.logits) : pick_ptr(r, es);
    o.ld_dlogits = pick_ld(r, p.cols);
  }
  if (op == kBackward || op == kHook) {
    x.grad = r.u8() % 4 == 0 ? const_cast<void*>(p.logits) : pick_ptr(r, es);
    x.ld_grad = pick_ld(r, p.cols);
  }
  if (op == kBackward) x.saved = static_cast<const float*>(pick_ptr(r, 4));
  if (op == kHook) {
    x.hook_scale = pick_float(r, kScales, 4);
    x.row_scale = static_cast<const float*>(pick_ptr(r, 4));
  }
  if (op == kStats || op == kApply) x.stats = pick_ptr(r, 4);
}

u128 span(int64_t rows, int64_t cols, int64_t ld, size_t es) {
  if (rows <= 0) return 0;
  return mul_sat(add_sat(mul_sat(static_cast<u128>(rows - 1), static_cast<u128>(ld)), static_cast<u128>(cols)), es);
}
bool block_too_big(int64_t rows, int64_t ld, size_t es) {
  return mul_sat(mul_sat(static_cast<u128>(rows), static_cast<u128>(ld)), es) > static_cast<u128>(INT64_MAX);
}

// The documented rules of the cross-entropy ops (docs/design.md §2.1-2.3, §8; docs/c-abi.md).
Expect model_xent(XentOp op, const RawXent& x) {
  Expect e;
  if (!x.pb_present) {
    e.rule(true, PG_STATUS_NULL_POINTER, "problem is null");
    return e;
  }
  const pg_xent_problem_t& p = x.pb;
  const int dev = get_enum(p.device), dt = get_enum(p.dtype), tk = get_enum(p.target_kind), red = get_enum(p.reduction);
  e.rule(p.struct_size != sizeof p, PG_STATUS_INVALID_VALUE, "problem->struct_size");
  e.rule(dev != 0 && dev != 1, PG_STATUS_INVALID_VALUE, "problem->device not an enum value");
  e.rule(dev == 1, PG_STATUS_NO_CUDA_SUPPORT, "PG_DEVICE_CUDA in a host-only build");
  e.rule(dt < 0 || dt > 2, PG_STATUS_INVALID_VALUE, "problem->dtype");
  e.rule(tk < 0 || tk > 2, PG_STATUS_INVALID_VALUE, "problem->target_kind");
  e.rule(red < 0 || red > 2, PG_STATUS_INVALID_VALUE, "problem->reduction");
  const bool uses_up = op == kFB || op == kBackward || op == kApply;
  const bool uses_out = op == kFB || op == kApply;
  if (uses_up && x.up_present) e.rule(x.up.struct_size != sizeof x.up, PG_STATUS_INVALID_VALUE, "upstream->struct_size");
  if (uses_out) {
    e.rule(!x.out_present, PG_STATUS_NULL_POINTER, "outputs is null");
    if (x.out_present) e.rule(x.out.struct_size != sizeof x.out, PG_STATUS_INVALID_VALUE, "outputs->struct_size");
  }
  const size_t es = (dt == 1 || dt == 2) ? 2 : 4;
  const int64_t rows = p.rows, cols = p.cols;
  e.rule(rows < 0, PG_STATUS_INVALID_SIZE, "rows < 0");
  e.rule(rows > (int64_t(1) << 59), PG_STATUS_INVALID_SIZE, "rows > 2^59");
  e.rule(cols < 1, PG_STATUS_INVALID_SIZE, "cols < 1");
  e.rule(p.ld < 0, PG_STATUS_INVALID_SIZE, "ld < 0");
  const int64_t ld = p.ld == 0 ? cols : p.ld;
  e.rule(p.ld >= 0 && ld < cols, PG_STATUS_INVALID_SIZE, "ld < cols");
  e.rule(rows >= 0 && ld >= 0 && block_too_big(rows, ld, es), PG_STATUS_INVALID_SIZE, "rows x ld overflows");
  e.rule(p.col_offset < 0, PG_STATUS_INVALID_SIZE, "col_offset < 0");
  e.rule(p.total_cols < 0, PG_STATUS_INVALID_SIZE, "total_cols < 0");
  e.rule(p.col_offset > 0 && p.total_cols == 0, PG_STATUS_INVALID_SIZE, "col_offset without total_cols");
  const int64_t total = p.total_cols == 0 ? cols : p.total_cols;
  e.rule(p.col_offset >= 0 && p.total_cols >= 0 && cols >= 1 &&
             static_cast<__int128>(p.col_offset) + cols > static_cast<__int128>(total),
         PG_STATUS_INVALID_SIZE, "col_offset + cols > total_cols");
  const float a = p.alpha;
  e.rule(!std::isfinite(a) || a < 0 || !std::isfinite(a * 1.4426950408889634f), PG_STATUS_INVALID_VALUE, "alpha");
  e.rule(!(p.label_smoothing >= 0.f && p.label_smoothing < 1.f), PG_STATUS_INVALID_VALUE, "label_smoothing");
  e.rule(!p.logits, PG_STATUS_NULL_POINTER, "logits null");
  e.rule(!p.targets, PG_STATUS_NULL_POINTER, "targets null");
  const bool dense = tk == PG_TARGET_DENSE;
  int64_t tld = 0;
  if (dense) {
    e.rule(p.target_ld < 0, PG_STATUS_INVALID_SIZE, "target_ld < 0");
    tld = p.target_ld == 0 ? cols : p.target_ld;
    e.rule(p.target_ld >= 0 && tld < cols, PG_STATUS_INVALID_SIZE, "target_ld < cols");
    e.rule(rows >= 0 && tld >= 0 && block_too_big(rows, tld, es), PG_STATUS_INVALID_SIZE, "rows x target_ld overflows");
  }
  const int64_t nrows = rows < 0 ? 0 : rows;
  const bool none = red == PG_REDUCTION_NONE;
  const size_t tsz = tk == PG_TARGET_INDEX_INT64 ? 8 : 4;
  std::vector<Region> ins, outs;
  ins.push_back({p.logits, span(nrows, cols < 0 ? 0 : cols, ld < 0 ? 0 : ld, es), "logits"});
  ins.push_back({p.targets, dense ? span(nrows, cols < 0 ? 0 : cols, tld < 0 ? 0 : tld, es) : static_cast<u128>(nrows) * tsz,
                 "targets"});
  // A gradient output: required except in forward_backward / shard_apply; same ld when in place.
  auto grad_rules = [&](const void* g, int64_t ldg_arg, bool required) {
    e.rule(required && !g, PG_STATUS_NULL_POINTER, "gradient output null");
    if (!g) return;
    e.rule(ldg_arg < 0, PG_STATUS_INVALID_SIZE, "gradient ld < 0");
    const int64_t ldg = ldg_arg == 0 ? ld : ldg_arg;
    e.rule(ldg_arg >= 0 && ldg < cols, PG_STATUS_INVALID_SIZE, "gradient ld < cols");
    e.rule(ldg >= 0 && rows >= 0 && block_too_big(rows, ldg, es), PG_STATUS_INVALID_SIZE, "rows x gradient ld overflows");
    e.rule(g == p.logits && ldg_arg >= 0 && ldg != ld, PG_STATUS_INVALID_LAYOUT, "in place with a different ld");
    outs.push_back({g, span(nrows, cols < 0 ? 0 : cols, ldg < 0 ? 0 : ldg, es), "gradient"});
  };
  if (uses_up && x.up_present) {
    e.rule(!std::isfinite(x.up.scale), PG_STATUS_INVALID_VALUE, "upstream->scale not finite");
    ins.push_back({x.up.values, static_cast<u128>(none ? nrows : 1) * 4, "upstream->values"});
  }
  if (uses_out && x.out_present) {
    outs.push_back({x.out.loss, static_cast<u128>(none ? nrows : 1) * 4, "loss"});
    outs.push_back({x.out.lse, static_cast<u128>(nrows) * 4, "lse"});
    outs.push_back({x.out.lse_alpha, static_cast<u128>(nrows) * 4, "lse_alpha"});
    grad_rules(x.out.dlogits, x.out.ld_dlogits, false);
  }
  if (op == kBackward) {
    grad_rules(x.grad, x.ld_grad, true);
    ins.push_back({x.saved, static_cast<u128>(nrows) * 4, "saved_lse_alpha"});
  }
  // A dense row's target mass sums over every shard (docs/design.md §2.5): the whole-row ops refuse a
  // column shard of dense targets.
  if ((op == kFB || op == kBackward) && dense)
    e.rule(p.col_offset != 0 || total != cols, PG_STATUS_UNSUPPORTED, "dense targets on a column shard");
  if (op == kHook) {
    e.rule(p.col_offset != 0 || total != cols, PG_STATUS_INVALID_SIZE, "hook on a column shard");
    e.rule(!std::isfinite(x.hook_scale) || x.hook_scale < 0, PG_STATUS_INVALID_VALUE, "hook scale");
    grad_rules(x.grad, x.ld_grad, true);
    ins.push_back({x.row_scale, static_cast<u128>(nrows) * 4, "row_scale"});
  }
  if (op == kStats) {
    e.rule(!x.stats, PG_STATUS_NULL_POINTER, "stats null");
    e.rule(x.stats && reinterpret_cast<uintptr_t>(x.stats) % 8 != 0, PG_STATUS_INVALID_LAYOUT, "stats misaligned");
    outs.push_back({x.stats, static_cast<u128>(nrows) * sizeof(pg_row_stats_t), "stats"});
  }
  if (op == kApply) {
    e.rule(!x.stats, PG_STATUS_NULL_POINTER, "merged null");
    e.rule(x.stats && reinterpret_cast<uintptr_t>(x.stats) % 8 != 0, PG_STATUS_INVALID_LAYOUT, "merged misaligned");
    ins.push_back({x.stats, static_cast<u128>(nrows) * sizeof(pg_row_stats_t), "merged"});
  }
  outs.push_back({p.bad_target_count, 4, "bad_target_count"});
  for (size_t o = 0; o < outs.size(); ++o) {
    for (size_t i = 0; i < ins.size(); ++i) {
      // The gradient may be written exactly over the logits (in place).
      if (i == 0 && std::strcmp(outs[o].name, "gradient") == 0 && outs[o].p == p.logits) continue;
      if (overlap(outs[o], ins[i])) {
        e.rule(true, PG_STATUS_INVALID_LAYOUT, outs[o].name);
        e.why += "overlaps ";
        e.why += ins[i].name;
        e.why += "; ";
      }
    }
    for (size_t k = o + 1; k < outs.size(); ++k)
      if (overlap(outs[o], outs[k])) {
        e.rule(true, PG_STATUS_INVALID_LAYOUT, outs[o].name);
        e.why += "overlaps ";
        e.why += outs[k].name;
        e.why += "; ";
      }
  }
  for (const Region& g : ins) e.touch(g.p, g.bytes);
  for (const Region& g : outs) e.touch(g.p, g.bytes);
  // The host backend scans the class indices last, before its first store.
  if (!e.must && rows > 0 && !dense && p.targets && e.reads_ok) {
    for (int64_t i = 0; i < rows; ++i) {
      int64_t y;
      if (tk == PG_TARGET_INDEX_INT32) {
        int32_t y32;
        std::memcpy(&y32, static_cast<const unsigned char*>(p.targets) + 4 * i, 4);
        y = y32;
      } else {
        std::memcpy(&y, static_cast<const unsigned char*>(p.targets) + 8 * i, 8);
      }
      if (y != p.ignore_index && (y < 0 || y >= total)) {
        e.rule(true, PG_STATUS_INVALID_TARGET, "class index out of range", false);
        break;
      }
    }
  }
  return e;
}

// What a successful raw cross-entropy call may write.
void allow_xent(XentOp op, const RawXent& x) {
  const pg_xent_problem_t& p = x.pb;
  const int dt = get_enum(p.dtype);
  const size_t es = elem_size(dt);
  const int64_t ld = p.ld == 0 ? p.cols : p.ld;
  const bool none = get_enum(p.reduction) == PG_REDUCTION_NONE;
  if (op == kFB || op == kApply) {
    allow(x.out.loss, static_cast<u128>(none ? p.rows : 1) * 4);
    allow(x.out.lse, static_cast<u128>(p.rows) * 4);
    allow(x.out.lse_alpha, static_cast<u128>(p.rows) * 4);
    if (x.out.dlogits) allow_grad(x.out.dlogits, p.rows, p.cols, x.out.ld_dlogits ? x.out.ld_dlogits : ld, es);
  }
  if (op == kBackward || op == kHook) allow_grad(x.grad, p.rows, p.cols, x.ld_grad ? x.ld_grad : ld, es);
  if (op == kStats) allow(x.stats, static_cast<u128>(p.rows) * sizeof(pg_row_stats_t));
}

void raw_xent(Reader& r, XentOp op) {
  RawXent x;
  decode_raw_xent(r, op, x);
  const Expect e = model_xent(op, x);
  if (e.skip()) return;  // the call would read or write past the caller's buffers
  const pg_xent_problem_t* pb = x.pb_present ? &x.pb : nullptr;
  const pg_upstream_t* up = x.up_present ? &x.up : nullptr;
  const pg_xent_outputs_t* out = x.out_present ? &x.out : nullptr;
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow_xent(op, x);
  static const char* const names[] = {"pg_xent_forward_backward", "pg_xent_backward", "pg_xent_hook",
                                      "pg_xent_shard_stats", "pg_xent_shard_apply"};
  const pg_xent_problem_t& p = x.pb;
  note("raw %s: size %zu dev %d dtype %d kind %d red %d rows %lld cols %lld ld %lld logits %zd targets %zd tld %lld "
       "ign %lld alpha %g eps %g off %lld total %lld | expect must 0x%x may 0x%x: %s\n",
       names[op], p.struct_size, get_enum(p.device), get_enum(p.dtype), get_enum(p.target_kind), get_enum(p.reduction),
       (long long)p.rows, (long long)p.cols, (long long)p.ld, p.logits ? (ptrdiff_t)off_of(p.logits) : -1,
       p.targets ? (ptrdiff_t)off_of(p.targets) : -1, (long long)p.target_ld, (long long)p.ignore_index,
       (double)p.alpha, (double)p.label_smoothing, (long long)p.col_offset, (long long)p.total_cols, e.must, e.may,
       e.why.c_str());
  int st = 0;
  switch (op) {
    case kFB: st = pg_xent_forward_backward(pb, up, out, nullptr, 0, nullptr); break;
    case kBackward: st = pg_xent_backward(pb, up, x.saved, x.grad, x.ld_grad, nullptr, 0, nullptr); break;
    case kHook: st = pg_xent_hook(pb, x.hook_scale, x.row_scale, x.grad, x.ld_grad, nullptr); break;
    case kStats: st = pg_xent_shard_stats(pb, static_cast<pg_row_stats_t*>(x.stats), nullptr); break;
    case kApply:
      st = pg_xent_shard_apply(pb, static_cast<const pg_row_stats_t*>(x.stats), up, out, nullptr, 0, nullptr);
      break;
  }
  check_outcome(names[op], st, &e);
}

void raw_merge(Reader& r) {
  const int dev = r.u8() < 240 ? 0 : pick_enum(r, 2);
  const int64_t shards = r.u8() < 128 ? 1 + r.u8() % 3 : pick_size(r);
  const int64_t rows = pick_size(r);
  const float alpha = pick_float(r, kAlphas, 7);
  auto* parts = static_cast<pg_row_stats_t*>(pick_ptr(r, 4));
  auto* merged = static_cast<pg_row_stats_t*>(pick_ptr(r, 4));
  Expect e;
  e.rule(dev != 0 && dev != 1, PG_STATUS_INVALID_VALUE, "device");
  e.rule(dev == 1, PG_STATUS_NO_CUDA_SUPPORT, "PG_DEVICE_CUDA in a host-only build");
  e.rule(rows < 0, PG_STATUS_INVALID_SIZE, "rows < 0");
  e.rule(shards < 1, PG_STATUS_INVALID_SIZE, "shards < 1");
  e.rule(!std::isfinite(alpha) || alpha < 0 || !std::isfinite(alpha * 1.4426950408889634f), PG_STATUS_INVALID_VALUE,
         "alpha");
  constexpr u128 kSB = sizeof(pg_row_stats_t);  // 32 bytes (docs/design.md §2.3)
  e.rule(rows > 0 && shards > 0 && mul_sat(mul_sat(static_cast<u128>(rows), static_cast<u128>(shards)), kSB) > static_cast<u128>(INT64_MAX),
         PG_STATUS_INVALID_SIZE, "shards x rows overflows");
  e.rule(!parts, PG_STATUS_NULL_POINTER, "parts null");
  e.rule(!merged, PG_STATUS_NULL_POINTER, "merged null");
  e.rule(parts && reinterpret_cast<uintptr_t>(parts) % 8 != 0, PG_STATUS_INVALID_LAYOUT, "parts misaligned");
  e.rule(merged && reinterpret_cast<uintptr_t>(merged) % 8 != 0, PG_STATUS_INVALID_LAYOUT, "merged misaligned");
  const u128 nr = rows < 0 ? 0 : static_cast<u128>(rows), ns = shards < 0 ? 0 : static_cast<u128>(shards);
  e.rule(overlap({parts, mul_sat(mul_sat(nr, ns), kSB), ""}, {merged, nr * kSB, ""}), PG_STATUS_INVALID_LAYOUT,
         "merged overlaps parts");
  e.touch(parts, mul_sat(mul_sat(nr, ns), kSB));
  e.touch(merged, nr * kSB);
  if (e.skip()) return;
  pg_device_t d;
  set_enum(d, dev);
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow(merged, nr * kSB);
  note("raw pg_xent_merge_stats dev %d shards %lld rows %lld alpha %g parts %zd merged %zd | must 0x%x: %s\n", dev,
       (long long)shards, (long long)rows, (double)alpha, parts ? (ptrdiff_t)off_of(parts) : -1,
       merged ? (ptrdiff_t)off_of(merged) : -1, e.must, e.why.c_str());
  check_outcome("pg_xent_merge_stats", pg_xent_merge_stats(d, parts, shards, rows, alpha, merged, nullptr), &e);
}

void xent_workspace_query(Reader& r) {
  const int64_t rows = pick_size(r);
  const int red = pick_enum(r, 3);
  size_t* bytes = static_cast<size_t*>(pick_ptr(r, 8));
  Expect e;
  e.rule(red < 0 || red > 2, PG_STATUS_INVALID_VALUE, "reduction");
  e.rule(rows < 0, PG_STATUS_INVALID_SIZE, "rows < 0");
  e.rule(rows > (int64_t(1) << 59), PG_STATUS_INVALID_SIZE, "rows > 2^59");
  e.rule(!bytes, PG_STATUS_NULL_POINTER, "bytes null");
  e.touch(bytes, 8);
  if (e.skip()) return;
  pg_reduction_t rd;
  set_enum(rd, red);
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow(bytes, 8);
  note("pg_xent_workspace_bytes rows %lld red %d | must 0x%x: %s\n", (long long)rows, red, e.must, e.why.c_str());
  const int st = pg_xent_workspace_bytes(rows, rd, bytes);
  check_outcome("pg_xent_workspace_bytes", st, &e);
  if (st == PG_STATUS_SUCCESS && red == PG_REDUCTION_NONE && *bytes != 0)
    oracle_failure("pg_xent_workspace_bytes(NONE) = %zu, documented 0", *bytes);
}

// ---- Buckets ---------------------------------------------------------------------------------------
// A plan this input built successfully: where it is, a copy of its bytes (a plan is intact while the
// arena still holds them) and the bucket it describes.
struct PlanRecord {
  size_t off = 0, bytes = 0;
  std::vector<unsigned char> image;
  int dtype = 0, param_dtype = 0, units = 0;
  std::vector<pg_bucket_tensor_t> tensors;
  bool intact() const { return std::memcmp(A + off, image.data(), bytes) == 0; }
};
std::vector<PlanRecord> g_plans;

const PlanRecord* plan_at(const void* p) {
  for (size_t i = g_plans.size(); i-- > 0;)
    if (in_arena(p) && g_plans[i].off == off_of(p)) return &g_plans[i];
  return nullptr;
}

size_t plan_bytes_of(int64_t count) {
  size_t b = 0;
  if (pg_bucket_plan_bytes(count, &b) != PG_STATUS_SUCCESS) oracle_failure("pg_bucket_plan_bytes(%lld) failed", (long long)count);
  return b;
}

void record_plan(const pg_bucket_desc_t& d, const void* plan) {
  PlanRecord rec;
  rec.off = off_of(plan);
  rec.bytes = plan_bytes_of(d.count);
  rec.image.assign(static_cast<const unsigned char*>(plan), static_cast<const unsigned char*>(plan) + rec.bytes);
  rec.dtype = get_enum(d.grad_dtype);
  rec.units = get_enum(d.units);
  rec.param_dtype = rec.units == PG_BUCKET_UNITS_ROWS ? get_enum(d.param_dtype) : rec.dtype;
  rec.tensors.assign(d.tensors, d.tensors + d.count);
  g_plans.push_back(rec);
  if (g_plans.size() > 8) g_plans.erase(g_plans.begin());
}

// The model of pg_bucket_plan_build (docs/c-abi.md, docs/design.md §2.4 Plans).
Expect model_build(const pg_bucket_desc_t* d, const void* plan, size_t plan_bytes) {
  Expect e;
  if (!d) {
    e.rule(true, PG_STATUS_NULL_POINTER, "desc null");
    return e;
  }
  const int dev = get_enum(d->device), gd = get_enum(d->grad_dtype), pd = get_enum(d->param_dtype), un = get_enum(d->units);
  e.rule(d->struct_size != sizeof *d, PG_STATUS_INVALID_VALUE, "desc->struct_size");
  e.rule(dev != 0 && dev != 1, PG_STATUS_INVALID_VALUE, "desc->device");
  e.rule(dev == 1, PG_STATUS_NO_CUDA_SUPPORT, "PG_DEVICE_CUDA in a host-only build");
  e.rule(gd < 0 || gd > 2, PG_STATUS_INVALID_VALUE, "desc->grad_dtype");
  e.rule(un < 0 || un > 1, PG_STATUS_INVALID_VALUE, "desc->units");
  const bool rows_mode = un == PG_BUCKET_UNITS_ROWS;
  if (rows_mode) e.rule(pd != gd && pd != PG_DTYPE_FLOAT32, PG_STATUS_INVALID_VALUE, "desc->param_dtype");
  e.rule(d->count < 0, PG_STATUS_INVALID_SIZE, "count < 0");
  // The documents give no upper bound; the library rejects huge counts as a size error.
  e.open(d->count > (int64_t(1) << 31), bit(PG_STATUS_INVALID_SIZE), "huge count");
  e.rule(d->count > (int64_t(1) << 40), PG_STATUS_INVALID_SIZE, "count > 2^40");
  e.rule(d->count > 0 && !d->tensors, PG_STATUS_NULL_POINTER, "tensors null");
  if (e.must) return e;
  // Then the plan buffer, before the table is read.
  e.rule(!plan, PG_STATUS_NULL_POINTER, "plan null");
  e.rule(plan && reinterpret_cast<uintptr_t>(plan) % 16 != 0, PG_STATUS_INVALID_LAYOUT, "plan misaligned");
  const size_t need = plan_bytes_of(d->count);
  e.rule(plan_bytes < need, PG_STATUS_WORKSPACE_TOO_SMALL, "plan_bytes too small");
  e.write(plan, need);
  if (e.must || d->count == 0) return e;
  e.touch(d->tensors, static_cast<u128>(d->count) * sizeof(pg_bucket_tensor_t));
  if (!e.reads_ok) return e;
  const size_t ge = elem_size(gd), pe = elem_size(pd == PG_DTYPE_FLOAT32 ? 0 : pd);
  const pg_bucket_tensor_t* ts = d->tensors;
  for (int64_t i = 0; i < d->count; ++i) {
    const pg_bucket_tensor_t& t = ts[i];
    e.rule(t.numel < 0, PG_STATUS_INVALID_SIZE, "tensor numel < 0", false);
    e.open(t.numel > (int64_t(1) << 58), bit(PG_STATUS_INVALID_SIZE), "tensor numel huge");
    if (t.numel <= 0) continue;
    e.rule(!t.grad, PG_STATUS_NULL_POINTER, "tensor grad null", false);
    e.rule(t.grad && reinterpret_cast<uintptr_t>(t.grad) % ge != 0, PG_STATUS_INVALID_LAYOUT, "grad misaligned", false);
    e.rule(static_cast<u128>(reinterpret_cast<uintptr_t>(t.grad)) + static_cast<u128>(t.numel) * ge > UINTPTR_MAX,
           PG_STATUS_INVALID_LAYOUT, "grad range wraps the address space", false);
    e.write(t.grad, static_cast<u128>(t.numel) * ge);
    if (!rows_mode) continue;
    e.rule(!t.param, PG_STATUS_NULL_POINTER, "tensor param null", false);
    e.rule(t.param && reinterpret_cast<uintptr_t>(t.param) % pe != 0, PG_STATUS_INVALID_LAYOUT, "param misaligned", false);
    e.rule(static_cast<u128>(reinterpret_cast<uintptr_t>(t.param)) + static_cast<u128>(t.numel) * pe > UINTPTR_MAX,
           PG_STATUS_INVALID_LAYOUT, "param range wraps the address space", false);
    e.rule(t.rows < 0 || t.rows > t.numel || (t.rows > 0 && t.numel % t.rows != 0), PG_STATUS_INVALID_SIZE,
           "tensor rows does not divide numel", false);
    e.write(t.param, static_cast<u128>(t.numel) * pe);
  }
  for (int64_t i = 0; i < d->count; ++i)
    for (int64_t k = i + 1; k < d->count; ++k) {
      if (ts[i].numel <= 0 || ts[k].numel <= 0 || ts[i].numel > (int64_t(1) << 60) || ts[k].numel > (int64_t(1) << 60)) continue;
      e.rule(overlap_exact(ts[i].grad, static_cast<u128>(ts[i].numel) * ge, ts[k].grad, static_cast<u128>(ts[k].numel) * ge),
             PG_STATUS_INVALID_LAYOUT, "gradients overlap", false);
    }
  if (rows_mode)
    for (int64_t i = 0; i < d->count; ++i)
      for (int64_t k = 0; k < d->count; ++k) {
        if (ts[i].numel <= 0 || ts[k].numel <= 0 || ts[i].numel > (int64_t(1) << 60) || ts[k].numel > (int64_t(1) << 60)) continue;
        e.rule(overlap_exact(ts[i].param, static_cast<u128>(ts[i].numel) * pe, ts[k].grad,
                             static_cast<u128>(ts[k].numel) * ge),
               PG_STATUS_INVALID_LAYOUT, "a parameter overlaps a gradient", false);
      }
  // Writing the plan over the tensor table or a gradient is not addressed by the documents.
  const Region pr{plan, need, "plan"};
  e.open(overlap(pr, {d->tensors, static_cast<u128>(d->count) * sizeof(pg_bucket_tensor_t), ""}),
         bit(PG_STATUS_INVALID_LAYOUT), "plan overlaps desc->tensors");
  for (int64_t i = 0; i < d->count; ++i) {
    if (ts[i].numel <= 0 || ts[i].numel > (int64_t(1) << 60)) continue;
    e.open(overlap_exact(plan, need, ts[i].grad, static_cast<u128>(ts[i].numel) * ge), bit(PG_STATUS_INVALID_LAYOUT),
           "plan overlaps a gradient");
    if (rows_mode)
      e.open(overlap_exact(plan, need, ts[i].param, static_cast<u128>(ts[i].numel) * pe), bit(PG_STATUS_INVALID_LAYOUT),
             "plan overlaps a parameter");
  }
  return e;
}

// The model of the plan checks every op and query shares: null, alignment, an intact plan.
const PlanRecord* model_plan_arg(Expect& e, const void* plan, size_t plan_bytes) {
  e.rule(!plan, PG_STATUS_NULL_POINTER, "plan null");
  if (!plan) return nullptr;
  e.rule(reinterpret_cast<uintptr_t>(plan) % 16 != 0, PG_STATUS_INVALID_LAYOUT, "plan misaligned");
  const PlanRecord* rec = plan_at(plan);
  // plan_bytes is the caller's buffer size: smaller than the plan (or than any plan) is a size error.
  if (!rec) {
    e.rule(true, PG_STATUS_INVALID_VALUE, "not a plan");
    if (kOpsTakePlanBytes) e.open(plan_bytes < plan_bytes_of(0), bit(PG_STATUS_INVALID_SIZE), "plan_bytes below any plan");
    return nullptr;
  }
  e.rule(!rec->intact(), PG_STATUS_INVALID_VALUE, "plan changed since it was built");
  // A damaged image may claim any size: then a size error is as good as a corruption error.
  if (kOpsTakePlanBytes) e.open(!rec->intact(), bit(PG_STATUS_INVALID_SIZE), "damaged plan's size fields");
  if (kOpsTakePlanBytes) e.rule(plan_bytes < rec->bytes, PG_STATUS_INVALID_SIZE, "plan_bytes smaller than the plan");
  e.touch(plan, rec->bytes);
  return rec->intact() ? rec : nullptr;
}

// The plan buffer size a raw call passes; never past the arena (the caller owns that many bytes).
size_t raw_plan_bytes(Reader& r, const void* plan) {
  const PlanRecord* rec = plan_at(plan);
  const uint8_t b = r.u8();
  size_t v;
  if (rec && b < 208) v = rec->bytes;
  else if (rec && b < 232) v = rec->bytes - 16 * (1 + b % 6);
  else if (rec && b < 240) v = rec->bytes + 16 * (b % 4);
  else v = r.u16();
  const size_t room = in_arena(plan) ? kArena - off_of(plan) : 0;
  return v < room ? v : room;
}

// The rules an op's optional output (norms, flags) follows: not in a gradient, a parameter (AGC)
// or the plan image.
void model_op_output(Expect& e, const PlanRecord& rec, const void* p, u128 bytes, const char* name, const void* ws,
                     size_t ws_bytes) {
  if (!p) return;
  const size_t ge = elem_size(rec.dtype), pe = elem_size(rec.param_dtype);
  for (const pg_bucket_tensor_t& t : rec.tensors) {
    if (overlap_exact(p, bytes, t.grad, static_cast<u128>(t.numel) * ge)) e.rule(true, PG_STATUS_INVALID_LAYOUT, name);
    if (rec.units == PG_BUCKET_UNITS_ROWS && overlap_exact(p, bytes, t.param, static_cast<u128>(t.numel) * pe))
      e.rule(true, PG_STATUS_INVALID_LAYOUT, name);
  }
  if (overlap(Region{p, bytes, ""}, Region{A + rec.off, rec.bytes, ""})) e.rule(true, PG_STATUS_INVALID_LAYOUT, name);
  // The host backend uses no workspace; whether an output may overlap the unused one is open.
  e.open(ws && overlap_exact(p, bytes ? bytes : 1, ws, ws_bytes), bit(PG_STATUS_INVALID_LAYOUT), "output overlaps workspace");
}

// ---- Bucket references (docs/design.md §2.4) -------------------------------------------------------
struct GroupStats {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};

// Sign-power with coefficient k: k sign(g)|g|^beta (0 -> 0).
double power_map(double g, double k, double beta) {
  if (g == 0) return k * g;
  return (g < 0 ? -1 : 1) * k * std::pow(std::fabs(g), beta);
}

// Runs one valid bucket op on a fresh valid bucket and checks every element.
void valid_bucket(Reader& r, int op) {
  // op: 0 clip_norm, 1 power, 2 agc, 3 workspace query + upload, 4 from_flat + build + clip_norm.
  Alloc al(r);
  const int dtype = r.u8() % 3;
  const bool rows_mode = op == 2;
  const int pdtype = rows_mode && r.u8() % 2 ? PG_DTYPE_FLOAT32 : dtype;
  const size_t ge = elem_size(dtype), pe = elem_size(pdtype);
  const int64_t count = 1 + r.u8() % 4;
  std::vector<pg_bucket_tensor_t> ts(count);
  // The flat form: one buffer, count + 1 offsets.
  if (op == 4) {
    std::vector<int64_t> off(count + 1, 0);
    off[0] = r.u8() % 3;
    for (int64_t i = 0; i < count; ++i) off[i + 1] = off[i] + r.u8() % 150;
    void* data = al.take(r, static_cast<size_t>(off[count] + 1) * ge, 16);
    auto* offs = static_cast<int64_t*>(al.take(r, static_cast<size_t>(count + 1) * 8, 8));
    auto* out = static_cast<pg_bucket_tensor_t*>(al.take(r, static_cast<size_t>(count) * sizeof(pg_bucket_tensor_t), 8));
    if (!al.ok) return;
    std::memcpy(offs, off.data(), off.size() * 8);
    for (int64_t i = 0; i <= off[count]; ++i) store_exact(dtype, data, i, grid(r, 32) / 2);
    pg_dtype_t dt;
    set_enum(dt, dtype);
    snapshot();
    std::memset(g_mask, 0, sizeof g_mask);
    allow(out, static_cast<u128>(count) * sizeof(pg_bucket_tensor_t));
    note("valid pg_bucket_tensors_from_flat dtype %d count %lld total %lld\n", dtype, (long long)count, (long long)off[count]);
    check_outcome("pg_bucket_tensors_from_flat", pg_bucket_tensors_from_flat(data, dt, offs, count, nullptr, nullptr, out),
                  nullptr);
    for (int64_t i = 0; i < count; ++i) {
      if (out[i].grad != static_cast<unsigned char*>(data) + off[i] * ge || out[i].numel != off[i + 1] - off[i] ||
          out[i].param != nullptr || out[i].rows != 0)
        oracle_failure("tensors_from_flat out[%lld] = {%p, %p, %lld, %lld}", (long long)i, out[i].grad, out[i].param,
                       (long long)out[i].numel, (long long)out[i].rows);
      ts[i] = out[i];
    }
  } else {
    for (int64_t i = 0; i < count; ++i) {
      const int64_t numel = r.u8() % 200;
      int64_t rows = 0;
      if (rows_mode && numel > 0) {
        rows = 1 + r.u8() % 5;
        while (numel % rows) --rows;
        if (r.u8() % 4 == 0) rows = 0;
      }
      ts[i].numel = numel;
      ts[i].rows = rows;
      ts[i].grad = al.take(r, static_cast<size_t>(numel) * ge, r.u8() % 2 ? 16 : ge);
      ts[i].param = rows_mode ? al.take(r, static_cast<size_t>(numel) * pe, pe) : nullptr;
      if (!al.ok) return;
      for (int64_t k = 0; k < numel; ++k) {
        store_exact(dtype, ts[i].grad, k, grid(r, 32) / 2);
        if (rows_mode) store_exact(pdtype, const_cast<void*>(ts[i].param), k, grid(r, 32) / 2);
      }
    }
  }
  auto* table = static_cast<pg_bucket_tensor_t*>(al.take(r, static_cast<size_t>(count) * sizeof(pg_bucket_tensor_t), 8));
  const size_t pbytes = plan_bytes_of(count);
  void* plan = al.take(r, pbytes, 16);
  float* norms = static_cast<float*>(al.take(r, static_cast<size_t>(count) * 4, 4));
  int32_t* flags = static_cast<int32_t*>(al.take(r, 4, 4));
  if (!al.ok) return;
  std::memcpy(table, ts.data(), ts.size() * sizeof(pg_bucket_tensor_t));
  pg_bucket_desc_t d{};
  d.struct_size = sizeof d;
  set_enum(d.device, PG_DEVICE_HOST);
  set_enum(d.grad_dtype, dtype);
  set_enum(d.param_dtype, pdtype);
  set_enum(d.units, rows_mode ? PG_BUCKET_UNITS_ROWS : PG_BUCKET_UNITS_TENSOR);
  d.tensors = table;
  d.count = count;
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow(plan, pbytes);
  note("valid pg_bucket_plan_build dtype %d param %d units %d count %lld\n", dtype, pdtype, rows_mode, (long long)count);
  check_outcome("pg_bucket_plan_build", pg_bucket_plan_build(&d, plan, pbytes), nullptr);
  record_plan(d, plan);
  // The decoded gradients, and the groups they form.
  std::vector<std::vector<double>> g(count), w(count);
  for (int64_t i = 0; i < count; ++i)
    for (int64_t k = 0; k < ts[i].numel; ++k) {
      g[i].push_back(decode(dtype, ts[i].grad, k));
      if (rows_mode) w[i].push_back(decode(pdtype, ts[i].param, k));
    }
  const bool want_norms = r.u8() % 2, want_flags = r.u8() % 2;
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  for (int64_t i = 0; i < count; ++i) allow(ts[i].grad, static_cast<u128>(ts[i].numel) * ge);
  if (want_flags) allow(flags, 4);
  std::vector<std::vector<double>> ref(count), tol(count);
  if (op == 3) {
    size_t bytes = 1;
    std::memset(g_mask, 0, sizeof g_mask);
    note("  valid pg_bucket_workspace_bytes + pg_bucket_plan_upload\n");
    check_outcome("pg_bucket_workspace_bytes", call_ws_bytes(&pg_bucket_workspace_bytes, plan, pbytes, &bytes), nullptr);
    if (bytes != 0) oracle_failure("pg_bucket_workspace_bytes of a host plan = %zu, documented 0", bytes);
    check_outcome("pg_bucket_plan_upload", call_upload(&pg_bucket_plan_upload, plan, pbytes, nullptr, 0), nullptr);
    return;
  }
  if (op == 0 || op == 4) {
    const float max_norm = kPositive[r.u8() % 5];
    const int scope = r.u8() % 2;
    const int64_t groups = scope ? 1 : count;
    if (want_norms) allow(norms, static_cast<u128>(groups) * 4);
    pg_bucket_scope_t sc;
    set_enum(sc, scope);
    note("  valid pg_bucket_clip_norm max_norm %g scope %d norms %d flags %d\n", (double)max_norm, scope, want_norms,
         want_flags);
    check_outcome("pg_bucket_clip_norm",
                  call_clip(&pg_bucket_clip_norm, plan, pbytes, max_norm, sc, want_norms ? norms : nullptr, nullptr, 0,
                            want_flags ? flags : nullptr),
                  nullptr);
    std::vector<double> norm(groups, 0);
    for (int64_t i = 0; i < count; ++i)
      for (double v : g[i]) norm[scope ? 0 : i] += v * v;
    for (double& n : norm) n = std::sqrt(n);
    for (int64_t i = 0; i < count; ++i) {
      const double n = norm[scope ? 0 : i];
      const double k = std::min(1.0, static_cast<double>(max_norm) / (n + 1e-6));
      for (double v : g[i]) {
        ref[i].push_back(k * v);
        tol[i].push_back(std::fabs(k * v) * (1e-5 + rel_ulp(dtype)) + min_step(dtype));
      }
    }
    if (want_norms)
      for (int64_t k = 0; k < groups; ++k)
        if (!close(norms[k], norm[k], 1e-5 * norm[k] + 1e-30))
          oracle_failure("clip_norm norms[%lld] = %.9g, reference %.9g", (long long)k, (double)norms[k], norm[k]);
  } else if (op == 1) {
    static const float kBeta[] = {0.5f, 1.f, 1.5f, 2.f, 0.25f};
    const float beta = kBeta[r.u8() % 5];
    const int pres = r.u8() % 3, scope = r.u8() % 2;
    pg_norm_preserve_t pr;
    set_enum(pr, pres);
    pg_bucket_scope_t sc;
    set_enum(sc, scope);
    note("  valid pg_bucket_power beta %g preserve %d scope %d flags %d\n", (double)beta, pres, scope, want_flags);
    check_outcome("pg_bucket_power",
                  call_power(&pg_bucket_power, plan, pbytes, beta, pr, sc, nullptr, 0, want_flags ? flags : nullptr),
                  nullptr);
    const double e = pres == PG_PRESERVE_L2 ? 2.0 * beta : beta;
    std::vector<GroupStats> st(scope ? 1 : count);
    for (int64_t i = 0; i < count; ++i)
      for (double v : g[i]) {
        GroupStats& s = st[scope ? 0 : i];
        s.s0 += v * v;
        s.s2 += std::pow(std::fabs(v), e);
        s.s3 += std::fabs(v);
      }
    for (int64_t i = 0; i < count; ++i) {
      const GroupStats& s = st[scope ? 0 : i];
      double k = 1;
      if (s.s2 > 0 && pres == PG_PRESERVE_L1) k = s.s3 / s.s2;
      if (s.s2 > 0 && pres == PG_PRESERVE_L2) k = std::sqrt(s.s0 / s.s2);
      for (double v : g[i]) {
        const double o = power_map(v, k, beta);
        ref[i].push_back(o);
        tol[i].push_back(std::fabs(o) * (1e-4 + rel_ulp(dtype)) + min_step(dtype));
      }
    }
  } else {
    static const float kClip[] = {0.01f, 0.1f, 1.f, 0.5f};
    static const float kEps[] = {1e-3f, 0.f, 0.5f};
    static const float kBeta[] = {1.f, 0.5f, 2.f, 1.f};
    const float clip = kClip[r.u8() % 4], eps = kEps[r.u8() % 3], beta = kBeta[r.u8() % 4];
    const int pres = r.u8() % 3;
    pg_norm_preserve_t pr;
    set_enum(pr, pres);
    note("  valid pg_bucket_agc clip %g eps %g beta %g preserve %d flags %d\n", (double)clip, (double)eps, (double)beta,
         pres, want_flags);
    check_outcome("pg_bucket_agc",
                  call_agc(&pg_bucket_agc, plan, pbytes, clip, eps, beta, pr, nullptr, 0, want_flags ? flags : nullptr),
                  nullptr);
    const double e = pres == PG_PRESERVE_L2 ? 2.0 * beta : beta;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t n = ts[i].numel;
      const int64_t units = n == 0 ? 0 : (ts[i].rows > 1 ? ts[i].rows : 1);
      ref[i].assign(n, 0);
      tol[i].assign(n, -1);  // -1: not checked (a unit too close to the clipping threshold)
      for (int64_t u = 0; u < units; ++u) {
        const int64_t len = n / units, b0 = u * len;
        GroupStats s;
        for (int64_t k = b0; k < b0 + len; ++k) {
          s.s0 += g[i][k] * g[i][k];
          s.s1 += w[i][k] * w[i][k];
          s.s2 += std::pow(std::fabs(g[i][k]), e);
          s.s3 += std::fabs(g[i][k]);
        }
        const double gn = std::sqrt(s.s0), limit = clip * std::max(std::sqrt(s.s1), static_cast<double>(eps));
        const bool borderline = std::fabs(gn - limit) <= 1e-5 * (gn + limit);
        const double a = gn < limit ? 1.0 : limit / std::max(gn, 1e-6);
        double k = 1;
        if (beta == 1.f && pres == PG_PRESERVE_NONE) k = a;
        else if (pres == PG_PRESERVE_NONE) k = std::pow(a, beta);
        else if (s.s2 > 0 && pres == PG_PRESERVE_L1) k = a * s.s3 / s.s2;
        else if (s.s2 > 0 && pres == PG_PRESERVE_L2) k = a * std::sqrt(s.s0 / s.s2);
        else k = a;
        for (int64_t j = b0; j < b0 + len; ++j) {
          ref[i][j] = power_map(g[i][j], k, beta);
          tol[i][j] = borderline ? -1 : std::fabs(ref[i][j]) * (1e-4 + rel_ulp(dtype)) + min_step(dtype);
        }
      }
    }
  }
  for (int64_t i = 0; i < count; ++i)
    for (int64_t k = 0; k < ts[i].numel; ++k) {
      if (tol[i][k] < 0) continue;
      const double got = decode(dtype, ts[i].grad, k);
      if (!close(got, ref[i][k], tol[i][k]))
        oracle_failure("bucket op %d tensor %lld element %lld = %.9g, reference %.9g (tolerance %.3g, dtype %d)", op,
                       (long long)i, (long long)k, got, ref[i][k], tol[i][k], dtype);
    }
  if (want_flags && *flags != 0) oracle_failure("flags = %d after an op on finite gradients", *flags);
}

// Raw bucket calls.
void raw_plan_bytes_query(Reader& r) {
  const int64_t count = pick_size(r);
  size_t* bytes = static_cast<size_t*>(pick_ptr(r, 8));
  Expect e;
  e.rule(count < 0, PG_STATUS_INVALID_SIZE, "count < 0");
  e.rule(!bytes, PG_STATUS_NULL_POINTER, "bytes null");
  e.open(count > (int64_t(1) << 40), bit(PG_STATUS_INVALID_SIZE), "count too large for a plan");
  e.touch(bytes, 8);
  if (e.skip()) return;
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  allow(bytes, 8);
  note("pg_bucket_plan_bytes count %lld | must 0x%x: %s\n", (long long)count, e.must, e.why.c_str());
  const int st = pg_bucket_plan_bytes(count, bytes);
  check_outcome("pg_bucket_plan_bytes", st, &e);
  // A size that wrapped around would let a caller allocate too little for the plan.
  if (st == PG_STATUS_SUCCESS && static_cast<u128>(*bytes) < static_cast<u128>(count) * 16)
    oracle_failure("pg_bucket_plan_bytes(%lld) = %zu: smaller than 16 bytes per tensor (wrapped?)", (long long)count,
                   *bytes);
}

void raw_build(Reader& r) {
  pg_bucket_desc_t d{};
  const bool present = r.u8() < 250;
  d.struct_size = pick_struct_size(r, sizeof d);
  set_enum(d.device, r.u8() < 244 ? 0 : pick_enum(r, 2));
  const int gd = pick_enum(r, 3);
  set_enum(d.grad_dtype, gd);
  set_enum(d.param_dtype, r.u8() % 2 ? gd : pick_enum(r, 3));
  set_enum(d.units, pick_enum(r, 2));
  d.count = r.u8() < 200 ? r.u8() % 5 : pick_size(r);
  auto* table = static_cast<pg_bucket_tensor_t*>(pick_ptr(r, 8));
  d.tensors = table;
  // Fill the table (when it fits) with tensors in the arena: sizes, aliasing and nulls chosen here.
  const size_t ge = (gd == 1 || gd == 2) ? 2 : 4;
  if (table && d.count > 0 && d.count <= 8 && fits(table, static_cast<u128>(d.count) * sizeof(pg_bucket_tensor_t))) {
    for (int64_t i = 0; i < d.count; ++i) {
      pg_bucket_tensor_t t{};
      const uint8_t b = r.u8();
      t.numel = b < 240 ? r.u8() % 64 : pick_size(r);
      t.grad = pick_ptr(r, b % 16 == 1 ? 1 : ge);
      t.param = pick_ptr(r, b % 16 == 2 ? 1 : 4);
      t.rows = r.u8() < 200 ? r.u8() % 5 : pick_size(r);
      std::memcpy(table + i, &t, sizeof t);
    }
  }
  void* plan = pick_ptr(r, r.u8() % 8 == 0 ? 4 : 16);
  size_t pbytes = r.u8() < 224 && d.count >= 0 && d.count <= 64 ? plan_bytes_of(d.count) : r.u16();
  Expect e = model_build(present ? &d : nullptr, plan, pbytes);
  if (e.skip()) return;
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  if (present && d.count >= 0 && d.count <= (int64_t(1) << 40)) allow(plan, plan_bytes_of(d.count));
  note("raw pg_bucket_plan_build size %zu dev %d dtype %d param %d units %d count %lld table %zd plan %zd bytes %zu | "
       "must 0x%x may 0x%x: %s\n",
       d.struct_size, get_enum(d.device), gd, get_enum(d.param_dtype), get_enum(d.units), (long long)d.count,
       table ? (ptrdiff_t)off_of(table) : -1, plan ? (ptrdiff_t)off_of(plan) : -1, pbytes, e.must, e.may, e.why.c_str());
  const int st = pg_bucket_plan_build(present ? &d : nullptr, plan, pbytes);
  check_outcome("pg_bucket_plan_build", st, &e);
  if (st == PG_STATUS_SUCCESS) record_plan(d, plan);
}

void raw_from_flat(Reader& r) {
  void* data = pick_ptr(r, r.u8() % 2 ? 2 : 4);
  const int dt = pick_enum(r, 3);
  const int64_t count = r.u8() < 200 ? r.u8() % 5 : pick_size(r);
  auto* offs = static_cast<int64_t*>(pick_ptr(r, 8));
  const void** params = r.u8() % 2 ? static_cast<const void**>(pick_ptr(r, 8)) : nullptr;
  int64_t* rows = r.u8() % 2 ? static_cast<int64_t*>(pick_ptr(r, 8)) : nullptr;
  auto* out = static_cast<pg_bucket_tensor_t*>(pick_ptr(r, 8));
  if (offs && count > 0 && count < 16 && fits(offs, static_cast<u128>(count + 1) * 8) && r.u8() % 2) {
    int64_t o = r.u8() < 240 ? r.u8() % 4 : pick_size(r);
    for (int64_t i = 0; i <= count; ++i) {
      std::memcpy(offs + i, &o, 8);
      const uint8_t b = r.u8();
      // Saturating steps: the fuzzer's own arithmetic must not overflow (UBSan watches it too).
      if (b < 240) o = o > INT64_MAX - 40 ? o : o + b % 40;
      else o = o == INT64_MIN ? o : o - 1;
    }
  }
  Expect e;
  e.rule(dt < 0 || dt > 2, PG_STATUS_INVALID_VALUE, "dtype");
  e.rule(count < 0, PG_STATUS_INVALID_SIZE, "count < 0");
  // The same bound as a plan's tensor count.
  e.rule(count > (int64_t(1) << 40), PG_STATUS_INVALID_SIZE, "count > 2^40");
  const bool empty = count == 0;
  if (count > 0) {
    e.rule(!out, PG_STATUS_NULL_POINTER, "out null");
    e.rule(!offs, PG_STATUS_NULL_POINTER, "offsets null");
  }
  const u128 n = count > 0 ? static_cast<u128>(count) : 0;
  if (!e.must && count > 0) {
    e.touch(offs, (n + 1) * 8);
    e.touch(params, n * 8);
    e.touch(rows, n * 8);
    e.touch(out, n * sizeof(pg_bucket_tensor_t));
    if (!e.reads_ok) return;  // the caller promised count + 1 offsets
    std::vector<int64_t> o(offs, offs + count + 1);
    e.rule(o[0] < 0, PG_STATUS_INVALID_SIZE, "offsets[0] < 0", false);
    bool mono = true;
    for (int64_t i = 0; i < count; ++i) mono = mono && o[i + 1] >= o[i];
    e.rule(!mono, PG_STATUS_INVALID_LAYOUT, "offsets decrease", false);
    e.rule(!data && mono && o[count] > o[0], PG_STATUS_NULL_POINTER, "data null with elements", false);
    // Offsets whose byte address would not fit in 64 bits are a size error (the bound is not
    // documented: anything past 2^58 elements may be rejected).
    e.open(mono && o[count] > (int64_t(1) << 58), bit(PG_STATUS_INVALID_SIZE), "offsets huge");
    // out is written while offsets, params and rows are read: they must not share bytes.
    const Region ro{out, n * sizeof(pg_bucket_tensor_t), "out"};
    const bool alias = overlap(ro, {offs, (n + 1) * 8, ""}) || overlap(ro, {params, n * 8, ""}) ||
                       overlap(ro, {rows, n * 8, ""});
    e.rule(alias, PG_STATUS_INVALID_LAYOUT, "out overlaps offsets, params or rows", false);
  }
  if (!e.early && !e.reads_ok) return;
  pg_dtype_t dtype;
  set_enum(dtype, dt);
  std::vector<int64_t> o;
  if (!e.must && count > 0) o.assign(offs, offs + count + 1);
  std::vector<const void*> pv;
  std::vector<int64_t> rv;
  if (!e.must && count > 0 && params) pv.assign(params, params + count);
  if (!e.must && count > 0 && rows) rv.assign(rows, rows + count);
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  if (!empty && count > 0 && e.reads_ok) allow(out, n * sizeof(pg_bucket_tensor_t));
  note("raw pg_bucket_tensors_from_flat data %zd dtype %d count %lld offsets %zd params %zd rows %zd out %zd | must 0x%x: %s\n",
       data ? (ptrdiff_t)off_of(data) : -1, dt, (long long)count, offs ? (ptrdiff_t)off_of(offs) : -1,
       params ? (ptrdiff_t)off_of(params) : -1, rows ? (ptrdiff_t)off_of(rows) : -1, out ? (ptrdiff_t)off_of(out) : -1,
       e.must, e.why.c_str());
  const int st = pg_bucket_tensors_from_flat(data, dtype, offs, count, params, rows, out);
  check_outcome("pg_bucket_tensors_from_flat", st, &e);
  if (st != PG_STATUS_SUCCESS || count <= 0) return;
  const size_t es = elem_size(dt);
  for (int64_t i = 0; i < count; ++i) {
    const void* want_grad = data ? static_cast<unsigned char*>(data) + o[i] * static_cast<int64_t>(es) : nullptr;
    if (out[i].grad != want_grad || out[i].numel != o[i + 1] - o[i] ||
        out[i].param != (params ? pv[i] : nullptr) || out[i].rows != (rows ? rv[i] : 0))
      oracle_failure("tensors_from_flat out[%lld] = {%p, %p, %lld, %lld}", (long long)i, out[i].grad, out[i].param,
                     (long long)out[i].numel, (long long)out[i].rows);
  }
}

// power / clip_norm / agc / workspace query / upload with raw arguments on a recorded plan or any
// pointer.
void raw_bucket_op(Reader& r, int op) {
  // op: 0 clip_norm, 1 power, 2 agc, 3 workspace_bytes, 4 upload
  void* plan;
  if (!g_plans.empty() && r.u8() < 192) plan = A + g_plans[r.u8() % g_plans.size()].off;
  else plan = pick_ptr(r, r.u8() % 4 == 0 ? 4 : 16);
  const size_t pbytes = raw_plan_bytes(r, plan);
  Expect e;
  float max_norm = 1, beta = 1, clip = 0.01f, eps = 1e-3f;
  int scope = 0, pres = 0;
  float* norms = nullptr;
  int32_t* flags = nullptr;
  size_t* bytes = nullptr;
  void* ws = r.u8() % 4 == 0 ? pick_ptr(r, 16) : nullptr;
  const size_t ws_bytes = ws ? r.u16() : 0;
  if (op == 0) {
    max_norm = pick_float(r, kPositive, 5);
    scope = pick_enum(r, 2);
    norms = static_cast<float*>(pick_ptr(r, 4));
    e.rule(!std::isfinite(max_norm) || max_norm <= 0, PG_STATUS_INVALID_VALUE, "max_norm");
    e.rule(scope < 0 || scope > 1, PG_STATUS_INVALID_VALUE, "scope");
  } else if (op == 1) {
    beta = pick_float(r, kPositive, 5);
    pres = pick_enum(r, 3);
    scope = pick_enum(r, 2);
    e.rule(!std::isfinite(beta) || beta <= 0, PG_STATUS_INVALID_VALUE, "beta");
    e.rule(pres < 0 || pres > 2, PG_STATUS_INVALID_VALUE, "preserve");
    e.rule(scope < 0 || scope > 1, PG_STATUS_INVALID_VALUE, "scope");
  } else if (op == 2) {
    clip = pick_float(r, kPositive, 5);
    eps = pick_float(r, kPositive, 5);
    beta = r.u8() % 2 ? 1.f : pick_float(r, kPositive, 5);
    pres = pick_enum(r, 3);
    e.rule(!std::isfinite(clip) || clip <= 0, PG_STATUS_INVALID_VALUE, "clip");
    e.rule(!std::isfinite(eps) || eps < 0, PG_STATUS_INVALID_VALUE, "eps");
    e.rule(!std::isfinite(beta) || beta <= 0, PG_STATUS_INVALID_VALUE, "beta");
    e.rule(pres < 0 || pres > 2, PG_STATUS_INVALID_VALUE, "preserve");
  } else if (op == 3) {
    bytes = static_cast<size_t*>(pick_ptr(r, 8));
    e.rule(!bytes, PG_STATUS_NULL_POINTER, "bytes null");
    e.write(bytes, 8);
  }
  if (op <= 2) flags = r.u8() % 2 ? static_cast<int32_t*>(pick_ptr(r, 4)) : nullptr;
  const PlanRecord* rec = model_plan_arg(e, plan, pbytes);
  if (rec && op <= 2) {
    const bool want_rows = op == 2;
    e.rule((rec->units == PG_BUCKET_UNITS_ROWS) != want_rows, PG_STATUS_INVALID_VALUE, "plan units do not fit the op");
    const u128 groups = rec->units == PG_BUCKET_UNITS_ROWS ? 0 : (scope == 1 ? 1 : rec->tensors.size());
    model_op_output(e, *rec, flags, 4, "flags overlaps a gradient, a parameter or the plan", ws, ws_bytes);
    if (op == 0) {
      model_op_output(e, *rec, norms, groups * 4, "norms overlaps a gradient, a parameter or the plan", ws, ws_bytes);
      e.rule(overlap_exact(norms, groups * 4, flags, 4), PG_STATUS_INVALID_LAYOUT, "norms overlaps flags");
      e.write(norms, groups * 4);
    }
    e.write(flags, 4);
    // A gradient inside the plan image would rewrite the plan during the op.
    for (const pg_bucket_tensor_t& t : rec->tensors)
      e.open(overlap_exact(t.grad, static_cast<u128>(t.numel) * elem_size(rec->dtype), A + rec->off, rec->bytes),
             bit(PG_STATUS_INVALID_LAYOUT), "a gradient overlaps the plan");
  }
  if (op == 3 && rec) e.rule(overlap(Region{bytes, 8, ""}, Region{A + rec->off, rec->bytes, ""}), PG_STATUS_INVALID_LAYOUT,
                             "bytes inside the plan");
  if (e.skip()) return;
  // An op on a plan that is not intact may read whatever the header claims: without the plan size
  // argument this is the documented known limit of the ABI, so the call is not made.
  if (!kOpsTakePlanBytes && plan && !rec && in_arena(plan) && off_of(plan) % 16 == 0) {
    const PlanRecord* old = plan_at(plan);
    if (old && std::memcmp(A + old->off, old->image.data(), 80) != 0) return;
    uint32_t magic;
    std::memcpy(&magic, plan, 4);
    if (!old && magic == 0x50424750u) return;
  }
  snapshot();
  std::memset(g_mask, 0, sizeof g_mask);
  if (rec && op <= 2) {
    for (const pg_bucket_tensor_t& t : rec->tensors) allow(t.grad, static_cast<u128>(t.numel) * elem_size(rec->dtype));
    allow(flags, 4);
    if (op == 0) allow(norms, (scope == 1 ? 1 : rec->tensors.size()) * 4);
  }
  if (op == 3) allow(bytes, 8);
  static const char* const names[] = {"pg_bucket_clip_norm", "pg_bucket_power", "pg_bucket_agc",
                                      "pg_bucket_workspace_bytes", "pg_bucket_plan_upload"};
  note("raw %s plan %zd (%s) plan_bytes %zu max_norm %g beta %g clip %g eps %g scope %d preserve %d norms %zd flags %zd "
       "ws %zd/%zu | must 0x%x may 0x%x: %s\n",
       names[op], plan ? (ptrdiff_t)off_of(plan) : -1, rec ? "intact plan" : "no intact plan", pbytes, (double)max_norm,
       (double)beta, (double)clip, (double)eps, scope, pres, norms ? (ptrdiff_t)off_of(norms) : -1,
       flags ? (ptrdiff_t)off_of(flags) : -1, ws ? (ptrdiff_t)off_of(ws) : -1, ws_bytes, e.must, e.may, e.why.c_str());
  pg_bucket_scope_t sc;
  set_enum(sc, scope);
  pg_norm_preserve_t pr;
  set_enum(pr, pres);
  int st = 0;
  switch (op) {
    case 0: st = call_clip(&pg_bucket_clip_norm, plan, pbytes, max_norm, sc, norms, ws, ws_bytes, flags); break;
    case 1: st = call_power(&pg_bucket_power, plan, pbytes, beta, pr, sc, ws, ws_bytes, flags); break;
    case 2: st = call_agc(&pg_bucket_agc, plan, pbytes, clip, eps, beta, pr, ws, ws_bytes, flags); break;
    case 3: st = call_ws_bytes(&pg_bucket_workspace_bytes, plan, pbytes, bytes); break;
    case 4: st = call_upload(&pg_bucket_plan_upload, plan, pbytes, ws, ws_bytes); break;
  }
  check_outcome(names[op], st, &e);
  if (st == PG_STATUS_SUCCESS && op == 3 && *bytes != 0)
    oracle_failure("pg_bucket_workspace_bytes of a host plan = %zu, documented 0", *bytes);
}

// The caller scribbles over its own memory (a plan, a table, a buffer): a few bytes at an offset.
void poke(Reader& r) {
  size_t o;
  if (!g_plans.empty() && r.u8() % 2) o = g_plans[r.u8() % g_plans.size()].off + r.u8() % 96;
  else o = r.u16() % kArena;
  const size_t n = 1 + r.u8() % 8;
  note("poke %zu bytes at %zu\n", n, o);
  for (size_t i = 0; i < n && o + i < kArena; ++i) A[o + i] = r.u8();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  g_log.clear();
  g_plans.clear();
  g_recent_n = 0;
  std::memset(g_mem, kGuardByte, sizeof g_mem);
  // The arena starts as pseudo-random bytes (some of them NaNs in every dtype).
  uint32_t x = 0x9E3779B9u ^ r.u8();
  for (size_t i = 0; i < kArena; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    A[i] = static_cast<unsigned char>(x >> 11);
  }
  const int calls = 1 + r.u8() % 6;
  for (int c = 0; c < calls; ++c) {
    const uint8_t op = r.u8() % 16;
    const bool valid = r.u8() % 2 == 0;
    switch (op) {
      case 0: valid ? valid_forward_backward(r, false) : raw_xent(r, kFB); break;
      case 1: valid ? valid_forward_backward(r, true) : raw_xent(r, kBackward); break;
      case 2: valid ? valid_hook(r) : raw_xent(r, kHook); break;
      case 3: valid ? valid_split(r) : raw_xent(r, kStats); break;
      case 4: valid ? valid_split(r) : raw_merge(r); break;
      case 5: valid ? valid_split(r) : raw_xent(r, kApply); break;
      case 6: xent_workspace_query(r); break;
      case 7: raw_plan_bytes_query(r); break;
      case 8: valid ? valid_bucket(r, 0) : raw_build(r); break;
      case 9: valid ? valid_bucket(r, 4) : raw_from_flat(r); break;
      case 10: valid ? valid_bucket(r, 3) : raw_bucket_op(r, 3); break;
      case 11: valid ? valid_bucket(r, 3) : raw_bucket_op(r, 4); break;
      case 12: valid ? valid_bucket(r, 1) : raw_bucket_op(r, 1); break;
      case 13: valid ? valid_bucket(r, 0) : raw_bucket_op(r, 0); break;
      case 14: valid ? valid_bucket(r, 2) : raw_bucket_op(r, 2); break;
      case 15: poke(r); break;
    }
  }
  return 0;
}
