// SPDX-License-Identifier: Apache-2.0
// kvevict's Python binding: numpy arrays in and out of the C++ library, nothing re-implemented.
//
// Arrays are float32 (float64 where the C++ side computes in double: reference attention, RoPE, head merge).
// A float32 array whose rows are contiguous goes to the library without a copy; any other layout is copied
// once; any other dtype is a TypeError naming the parameter. The library's InvalidArgument surfaces as
// kvevict.InvalidArgument, a ValueError with the C++ message ("kvevict: budget: expected ..., got ...").
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <kvevict/head_merge.hpp>

#include "erased.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace kvevict::python {
namespace {

using InArray = nb::ndarray<nb::ro, nb::device::cpu>;
using OutArray = nb::ndarray<nb::device::cpu>;
template <class T>
using NumpyArray = nb::ndarray<nb::numpy, T>;

// ---------------------------------------------------------------------------------------------------- arrays

template <class T>
NumpyArray<T> new_array(std::initializer_list<std::size_t> shape) {
  std::size_t n = 1;
  for (std::size_t s : shape) n *= s;
  T* data = new T[n > 0 ? n : 1]();
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return NumpyArray<T>(data, shape, owner);
}

std::string dtype_name(const nb::dlpack::dtype& t) {
  const char* kind = t.code == uint8_t(nb::dlpack::dtype_code::Float)    ? "float"
                     : t.code == uint8_t(nb::dlpack::dtype_code::Int)    ? "int"
                     : t.code == uint8_t(nb::dlpack::dtype_code::UInt)   ? "uint"
                     : t.code == uint8_t(nb::dlpack::dtype_code::Bool)   ? "bool"
                     : t.code == uint8_t(nb::dlpack::dtype_code::Bfloat) ? "bfloat"
                                                                         : "complex";
  return kind + std::to_string(int(t.bits));
}

[[noreturn]] void type_error(const std::string& parameter, const std::string& expected, const std::string& got) {
  throw nb::type_error(("kvevict: " + parameter + ": expected " + expected + ", got " + got).c_str());
}
[[noreturn]] void value_error(const std::string& parameter, const std::string& expected, const std::string& got) {
  throw nb::value_error(("kvevict: " + parameter + ": expected " + expected + ", got " + got).c_str());
}

std::string py_type_name(nb::handle h) { return nb::type_name(h.type()).c_str(); }

template <class T>
void require_dtype(const nb::dlpack::dtype& t, const char* parameter) {
  if (t != nb::dtype<T>())
    type_error(parameter, std::string("a ") + (sizeof(T) == 4 ? "float32" : "float64") + " array", dtype_name(t));
}

/// A 2-D view of a float array (a 1-D array is one row); rows must be contiguous, else `copy` holds a copy.
template <class T>
struct Rows {
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;
  Matrix copy;
  Map map{nullptr, 0, 0, Eigen::OuterStride<>(1)};
};

template <class T>
void view_rows(const InArray& a, const char* parameter, Rows<T>& rows) {
  require_dtype<T>(a.dtype(), parameter);
  if (a.ndim() != 1 && a.ndim() != 2) value_error(parameter, "a 1-D or 2-D array", std::to_string(a.ndim()) + "-D");
  const auto r = std::ptrdiff_t(a.ndim() == 2 ? a.shape(0) : 1), c = std::ptrdiff_t(a.shape(a.ndim() - 1));
  const std::int64_t inner = a.stride(a.ndim() - 1), outer = a.ndim() == 2 ? a.stride(0) : c;
  const T* data = static_cast<const T*>(a.data());
  if ((inner == 1 || c <= 1) && outer >= c) {
    new (&rows.map) typename Rows<T>::Map(data, r, c, Eigen::OuterStride<>(std::max<std::int64_t>(outer, 1)));
    return;
  }
  rows.copy.resize(r, c);
  for (std::ptrdiff_t i = 0; i < r; ++i)
    for (std::ptrdiff_t j = 0; j < c; ++j) rows.copy(i, j) = data[i * outer + j * inner];
  new (&rows.map) typename Rows<T>::Map(rows.copy.data(), r, c, Eigen::OuterStride<>(std::max<std::ptrdiff_t>(c, 1)));
}

/// `out` as given (T, contiguous rows, rows x cols), or a new array of that shape.
template <class T>
struct Output {
  using Map = Eigen::Map<RowMatrixOf<T>, 0, Eigen::OuterStride<>>;
  nb::object array;
  Map map{nullptr, 0, 0, Eigen::OuterStride<>(1)};
};

template <class T>
void make_output(nb::handle given, std::ptrdiff_t rows, std::ptrdiff_t cols, bool one_row, Output<T>& o) {
  using Map = typename Output<T>::Map;
  if (given.is_none()) {
    auto a = one_row ? new_array<T>({std::size_t(cols)}) : new_array<T>({std::size_t(rows), std::size_t(cols)});
    new (&o.map) Map(a.data(), rows, cols, Eigen::OuterStride<>(cols));
    o.array = a.cast();
    return;
  }
  OutArray out;
  if (!nb::try_cast(given, out, false))
    type_error("out", std::string("a writable ") + (sizeof(T) == 4 ? "float32" : "float64") + " array",
               py_type_name(given));
  require_dtype<T>(out.dtype(), "out");
  const bool two = out.ndim() == 2;
  const auto r = std::ptrdiff_t(two ? out.shape(0) : 1),
             c = std::ptrdiff_t(out.ndim() >= 1 ? out.shape(two ? 1 : 0) : 0);
  const std::string want = std::to_string(rows) + " x " + std::to_string(cols);
  if ((out.ndim() != 1 && !two) || r != rows || c != cols)
    value_error("out", "shape " + want,
                out.ndim() <= 2 ? std::to_string(r) + " x " + std::to_string(c) : std::to_string(out.ndim()) + "-D");
  const std::int64_t inner = out.stride(out.ndim() - 1), outer = two ? out.stride(0) : c;
  if (!(inner == 1 || c <= 1) || outer < c) value_error("out", "an array with contiguous rows", "other strides");
  new (&o.map) Map(static_cast<T*>(out.data()), r, c, Eigen::OuterStride<>(std::max<std::int64_t>(outer, 1)));
  o.array = nb::borrow(given);
}

std::vector<std::int64_t> positions_of(const std::optional<InArray>& a, const char* parameter, std::size_t n,
                                       std::int64_t first) {
  std::vector<std::int64_t> out(n);
  if (!a) {
    for (std::size_t i = 0; i < n; ++i) out[i] = first + std::int64_t(i);
    return out;
  }
  const auto t = a->dtype();
  if (t.code != uint8_t(nb::dlpack::dtype_code::Int) && t.code != uint8_t(nb::dlpack::dtype_code::UInt))
    type_error(parameter, "an integer array", dtype_name(t));
  if (a->ndim() != 1 || a->shape(0) != n)
    value_error(parameter, "a 1-D array of " + std::to_string(n),
                a->ndim() == 1 ? std::to_string(a->shape(0)) + " values" : std::to_string(a->ndim()) + "-D");
  const auto* bytes = static_cast<const char*>(a->data());
  for (std::size_t i = 0; i < n; ++i) {
    const char* p = bytes + std::int64_t(i) * a->stride(0) * std::int64_t(a->itemsize());
    std::int64_t v = 0;
    if (t.bits == 64)
      std::memcpy(&v, p, 8);
    else if (t.bits == 32) {
      std::int32_t x;
      std::memcpy(&x, p, 4);
      v = x;
    } else if (t.bits == 16) {
      std::int16_t x;
      std::memcpy(&x, p, 2);
      v = x;
    } else {
      std::int8_t x;
      std::memcpy(&x, p, 1);
      v = x;
    }
    out[i] = v;
  }
  return out;
}

// -------------------------------------------------------------------------------------------------- policies

struct ProtectedSpec : Composed {};
struct PyramidSpec : Composed {};
struct AdaptiveHeadsSpec : Composed {};
struct CachePositionsSpec : Composed {};

const char* kPolicyList =
    "a kvevict policy (Dense, Window, StreamingLLM, SlidingWindowRecompute, H2O, AhaKV, L2Norm, SnapKV, TOVA, or "
    "Protected, Pyramid, AdaptiveHeads, CachePositions over one of them)";

std::optional<BasePolicy> base_of(nb::handle h) {
  if (nb::isinstance<Dense>(h)) return BasePolicy(nb::cast<Dense>(h));
  if (nb::isinstance<SlidingWindowRecompute>(h)) return BasePolicy(nb::cast<SlidingWindowRecompute>(h));
  if (nb::isinstance<Window>(h)) return BasePolicy(nb::cast<Window>(h));
  if (nb::isinstance<StreamingLLM>(h)) return BasePolicy(nb::cast<StreamingLLM>(h));
  if (nb::isinstance<H2O>(h)) return BasePolicy(nb::cast<H2O>(h));
  if (nb::isinstance<AhaKV>(h)) return BasePolicy(nb::cast<AhaKV>(h));
  if (nb::isinstance<L2NormPy>(h)) return BasePolicy(nb::cast<L2NormPy>(h));
  if (nb::isinstance<SnapKV>(h)) return BasePolicy(nb::cast<SnapKV>(h));
  if (nb::isinstance<TOVA>(h)) return BasePolicy(nb::cast<TOVA>(h));
  return std::nullopt;
}

BasePolicy require_base(nb::handle h) {
  if (auto base = base_of(h)) return *base;
  type_error("policy",
             "a base policy (Dense, Window, StreamingLLM, SlidingWindowRecompute, H2O, AhaKV, L2Norm, "
             "SnapKV or TOVA)",
             py_type_name(h));
}

PolicySpec spec_of(nb::handle h) {
  if (auto base = base_of(h)) return *base;
  if (nb::isinstance<Composed>(h)) return nb::cast<Composed>(h);
  type_error("policy", kPolicyList, py_type_name(h));
}

nb::object base_object(const BasePolicy& base) {
  return std::visit([](const auto& p) { return nb::cast(p); }, base);
}

// -------------------------------------------------------------------------------------------------- cache

KvType kv_type_of(const std::string& name) {
  if (name == "f32" || name == "float32") return KvType::f32;
  if (name == "f16" || name == "float16" || name == "half") return KvType::f16;
  if (name == "bf16" || name == "bfloat16") return KvType::bf16;
  if (name == "f64" || name == "float64" || name == "double") return KvType::f64;
  value_error("kv_type", "'f32', 'f16', 'bf16' or 'f64'", "'" + name + "'");
}
const char* kv_type_name(KvType t) {
  return t == KvType::f16 ? "f16" : t == KvType::bf16 ? "bf16" : t == KvType::f64 ? "f64" : "f32";
}

/// A cache of either compute type: float32 arrays in and out, or float64 for f64 storage.
struct Cache {
  std::unique_ptr<AnyCacheBase> impl;
  AnyCache* f32 = nullptr;  // one of these two is impl
  AnyCache64* f64 = nullptr;
  nb::object policy;

  template <class F>
  decltype(auto) typed(F&& f) {
    return f32 ? f(*f32) : f(*f64);
  }

  const Shape& shape() const { return impl->shape(); }
  void check_layer(int layer) const { (void)impl->n_seen(layer); }  // throws InvalidArgument naming the layer
  std::vector<Held> held(int layer, int kv_head) const { return impl->held(layer, kv_head); }
};

template <class T>
nb::object forward_in(AnyCacheOf<T>& c, int layer, const InArray& queries, const InArray& keys, const InArray& values,
                      nb::handle out) {
  Rows<T> q, k, v;
  view_rows(queries, "queries", q);
  view_rows(keys, "keys", k);
  view_rows(values, "values", v);
  Output<T> o;
  make_output(out, q.map.rows(), q.map.cols(), queries.ndim() == 1, o);
  {
    nb::gil_scoped_release release;
    c.forward(layer, q.map, k.map, v.map, o.map);
  }
  return o.array;
}

nb::object forward(Cache& c, int layer, const InArray& queries, const InArray& keys, const InArray& values,
                   nb::handle out) {
  return c.typed([&](auto& typed) { return forward_in(typed, layer, queries, keys, values, out); });
}

void append(Cache& c, int layer, const InArray& keys, const InArray& values) {
  c.typed([&](auto& typed) {
    using T = typename std::decay_t<decltype(typed)>::In::Scalar;
    Rows<T> k, v;
    view_rows(keys, "keys", k);
    view_rows(values, "values", v);
    nb::gil_scoped_release release;
    typed.append(layer, k.map, v.map);
  });
}

nb::object attend(Cache& c, int layer, const InArray& queries, nb::handle out) {
  return c.typed([&](auto& typed) {
    using T = typename std::decay_t<decltype(typed)>::In::Scalar;
    Rows<T> q;
    view_rows(queries, "queries", q);
    Output<T> o;
    make_output(out, q.map.rows(), q.map.cols(), queries.ndim() == 1, o);
    {
      nb::gil_scoped_release release;
      typed.attend(layer, q.map, o.map);
    }
    return o.array;
  });
}

template <class T, class Get>
NumpyArray<T> per_held(const std::vector<Held>& held, Get get) {
  auto a = new_array<T>({held.size()});
  for (std::size_t i = 0; i < held.size(); ++i) a.data()[i] = get(held[i], i);
  return a;
}

nb::object kept_rows(Cache& c, int layer, int kv_head, bool keys) {
  const auto held = c.held(layer, kv_head);
  return c.typed([&](auto& typed) {
    using T = typename std::decay_t<decltype(typed)>::In::Scalar;
    auto a = new_array<T>({held.size(), std::size_t(c.shape().head_dim)});
    typed.rows(layer, kv_head, held, keys, a.data());
    return nb::object(a.cast());
  });
}

// -------------------------------------------------------------------------------------------------- evictor

struct PyEvictor {
  std::unique_ptr<AnyEvictor> impl;
  nb::object policy;
};

NumpyArray<std::int64_t> per_slot_positions(const SlotTable& slots, bool rotated) {
  auto a = new_array<std::int64_t>({std::size_t(slots.capacity())});
  for (int s = 0; s < slots.capacity(); ++s) a.data()[s] = rotated ? slots.rotated_at(s) : slots.position(s);
  return a;
}

void observe(PyEvictor& e, const InArray& weights, const InArray& query_positions, std::optional<double> scale,
             const std::optional<InArray>& logits) {
  const HeadContext& ctx = e.impl->context();
  Rows<float> w, l;
  view_rows(weights, "weights", w);
  const auto rows = w.map.rows();
  if (w.map.cols() != ctx.capacity || rows % ctx.group_size != 0 || rows == 0)
    value_error("weights",
                "shape (n_queries * group_size, capacity) = (k * " + std::to_string(ctx.group_size) + ", " +
                    std::to_string(ctx.capacity) + ")",
                std::to_string(rows) + " x " + std::to_string(w.map.cols()));
  const int n_queries = int(rows / ctx.group_size);
  if (w.map.outerStride() != w.map.cols()) {  // the policy reads rows of exactly `capacity`
    w.copy = w.map;
    new (&w.map) Rows<float>::Map(w.copy.data(), w.copy.rows(), w.copy.cols(), Eigen::OuterStride<>(w.copy.cols()));
  }
  if (e.impl->needs_logits() && !logits)
    value_error("logits", "the scaled attention logits (this policy reads them), same shape as weights", "None");
  if (logits) {
    view_rows(*logits, "logits", l);
    if (l.map.rows() != rows || l.map.cols() != w.map.cols())
      value_error("logits", "the shape of weights",
                  std::to_string(l.map.rows()) + " x " + std::to_string(l.map.cols()));
    if (l.map.outerStride() != l.map.cols()) {
      l.copy = l.map;
      new (&l.map) Rows<float>::Map(l.copy.data(), l.copy.rows(), l.copy.cols(), Eigen::OuterStride<>(l.copy.cols()));
    }
  }
  const auto qpos = positions_of(query_positions, "query_positions", std::size_t(n_queries), 0);
  const double s = scale ? *scale : 1.0 / std::sqrt(double(ctx.head_dim));
  e.impl->observe(AttentionView<float>{w.map.data(), logits ? l.map.data() : nullptr, s, qpos.data(), n_queries,
                                       ctx.group_size, e.impl->view()});
}

// -------------------------------------------------------------------------------------------------- attention

AttentionOptions attention_options(Normalization normalization, double scale,
                                   const std::optional<std::vector<double>>& sink_logits) {
  AttentionOptions o;
  o.normalization = normalization;
  o.scale = scale;
  if (sink_logits) o.sink_logits = *sink_logits;
  return o;
}

template <class T>
nb::object attention_in(const InArray& queries, const InArray& keys, const InArray& values, int n_q_heads,
                        int n_kv_heads, const std::optional<InArray>& query_positions,
                        const std::optional<InArray>& key_positions, const AttentionOptions& options) {
  Rows<T> q, k, v;
  view_rows(queries, "queries", q);
  view_rows(keys, "keys", k);
  view_rows(values, "values", v);
  const auto n = std::size_t(k.map.rows()), t = std::size_t(q.map.rows());
  const auto kpos = positions_of(key_positions, "key_positions", n, 0);
  const auto qpos = positions_of(query_positions, "query_positions", t, std::int64_t(n) - std::int64_t(t));
  using Matrix = typename Rows<T>::Matrix;
  Matrix out;
  {
    nb::gil_scoped_release release;
    out = attention<T>(q.map, k.map, v.map, qpos, kpos, n_q_heads, n_kv_heads, options);
  }
  auto a = queries.ndim() == 1 ? new_array<T>({std::size_t(out.cols())})
                               : new_array<T>({std::size_t(out.rows()), std::size_t(out.cols())});
  std::copy(out.data(), out.data() + out.size(), a.data());
  return a.cast();
}

template <class T>
nb::object rope_rotate(const Rope& rope, const InArray& x, const InArray& positions) {
  Rows<T> rows;
  view_rows(x, "x", rows);
  const int d = rope.head_dim();
  if (rows.map.cols() % d != 0)
    value_error("x", "rows of a multiple of head_dim = " + std::to_string(d) + " values",
                std::to_string(rows.map.cols()));
  const auto pos = positions_of(positions, "positions", std::size_t(rows.map.rows()), 0);
  auto a = x.ndim() == 1 ? new_array<T>({std::size_t(rows.map.cols())})
                         : new_array<T>({std::size_t(rows.map.rows()), std::size_t(rows.map.cols())});
  Eigen::Map<typename Rows<T>::Matrix> out(a.data(), rows.map.rows(), rows.map.cols());
  out = rows.map;
  for (Eigen::Index i = 0; i < out.rows(); ++i)
    for (Eigen::Index h = 0; h < out.cols(); h += d) rope.rotate(&out(i, h), pos[std::size_t(i)]);
  return a.cast();
}

NumpyArray<double> to_numpy(const Eigen::MatrixXd& m) {
  auto a = new_array<double>({std::size_t(m.rows()), std::size_t(m.cols())});
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(a.data(), m.rows(), m.cols()) = m;
  return a;
}

nb::list maps(const std::vector<Eigen::MatrixXd>& matrices) {
  nb::list out;
  for (const auto& m : matrices) out.append(to_numpy(m).cast());
  return out;
}

Eigen::MatrixXd calibration(const InArray& a, const char* parameter) {
  Rows<double> r;
  if (a.dtype() == nb::dtype<float>()) {
    Rows<float> f;
    view_rows(a, parameter, f);
    return f.map.cast<double>();
  }
  view_rows(a, parameter, r);
  return r.map;
}

}  // namespace
}  // namespace kvevict::python

NB_MODULE(_kvevict, m) {
  using namespace kvevict;
  using namespace kvevict::python;
  m.doc() = "kvevict: KV-cache eviction policies for LLM inference (C++ header-only library, bound with nanobind).";
  m.attr("__version__") = std::to_string(KVEVICT_VERSION_MAJOR) + "." + std::to_string(KVEVICT_VERSION_MINOR) + "." +
                          std::to_string(KVEVICT_VERSION_PATCH);

#ifdef KVEVICT_PYTHON_NATIVE
  m.attr("_built_for_this_cpu") = true;  // -march=native: rounds as the native C++ builds do
#else
  m.attr("_built_for_this_cpu") = false;
#endif
  nb::exception<InvalidArgument> invalid_argument(m, "InvalidArgument", PyExc_ValueError);
  invalid_argument.attr("__doc__") =
      "A rejected argument (a ValueError): the message names the parameter, what was expected and what was given, "
      "e.g. 'kvevict: budget: expected >= sinks + 1 = 5, got 4'. The object it was raised from is unchanged.";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const Unsupported& e) {
      PyErr_SetString(PyExc_TypeError, (std::string("kvevict: ") + e.what()).c_str());
    }
  });

  nb::enum_<Normalization>(m, "Normalization", "How attention weights are normalised.")
      .value("softmax", Normalization::softmax, "exp(x_i) / sum_j exp(x_j)")
      .value("off_by_one", Normalization::off_by_one, "exp(x_i) / (1 + sum_j exp(x_j)): softmax-off-by-one")
      .value("sink_logit", Normalization::sink_logit, "exp(x_i) / (exp(s_h) + sum_j exp(x_j)), one s_h per query head");
  nb::enum_<detail::GroupReduce>(m, "GroupReduce", "How a GQA group's query heads fold into their kv head's score.")
      .value("mean", detail::GroupReduce::mean)
      .value("sum", detail::GroupReduce::sum)
      .value("max", detail::GroupReduce::max);
  nb::enum_<SnapKV::Pooling>(m, "Pooling", "SnapKV's pooling of votes over neighbouring keys.")
      .value("average", SnapKV::Pooling::average)
      .value("max", SnapKV::Pooling::max);
  nb::enum_<RopeLayout>(m, "RopeLayout", "Which dimensions RoPE rotates together.")
      .value("adjacent", RopeLayout::adjacent, "(x0, x1), (x2, x3), ...: GGUF / Llama in GGUF files")
      .value("half_split", RopeLayout::half_split, "(x0, x_{d/2}), ...: GPT-NeoX and Hugging Face Llama");
  nb::enum_<HeadMergeMethod>(m, "HeadMergeMethod", "How fit_head_merge builds the merged heads.")
      .value("svd", HeadMergeMethod::svd)
      .value("mean", HeadMergeMethod::mean);

  nb::class_<Shape>(m, "Shape",
                    "The geometry of a cache. MHA: n_kv_heads == n_q_heads; MQA: n_kv_heads == 1; GQA: a divisor.")
      .def(
          "__init__",
          [](Shape* s, int n_layers, int n_q_heads, int n_kv_heads, int head_dim, int budget) {
            new (s) Shape{n_layers, n_q_heads, n_kv_heads, head_dim, budget};
          },
          "n_layers"_a = 1, "n_q_heads"_a = 1, "n_kv_heads"_a = 1, "head_dim"_a = 64, "budget"_a = 256)
      .def_rw("n_layers", &Shape::n_layers)
      .def_rw("n_q_heads", &Shape::n_q_heads)
      .def_rw("n_kv_heads", &Shape::n_kv_heads)
      .def_rw("head_dim", &Shape::head_dim)
      .def_rw("budget", &Shape::budget, "Tokens kept per (layer, kv head) after every step.")
      .def_prop_ro("group_size", &Shape::group_size, "Query heads per kv head.")
      .def("validate", &Shape::validate, "Raises InvalidArgument naming the first field out of range.")
      .def("__repr__", [](const Shape& s) {
        return "Shape(n_layers=" + std::to_string(s.n_layers) + ", n_q_heads=" + std::to_string(s.n_q_heads) +
               ", n_kv_heads=" + std::to_string(s.n_kv_heads) + ", head_dim=" + std::to_string(s.head_dim) +
               ", budget=" + std::to_string(s.budget) + ")";
      });

  nb::class_<Protect>(m, "Protect", "Tokens a policy never evicts: the first `sinks` and the newest `recent`.")
      .def(nb::init<>())
      .def(
          "__init__",
          [](Protect* p, int sinks, int recent) {
            new (p) Protect{sinks, recent};
          },
          "sinks"_a = 0, "recent"_a = 0)
      .def_rw("sinks", &Protect::sinks)
      .def_rw("recent", &Protect::recent)
      .def("covers", &Protect::covers, "position"_a, "newest"_a)
      .def("__repr__", [](const Protect& p) {
        return "Protect(sinks=" + std::to_string(p.sinks) + ", recent=" + std::to_string(p.recent) + ")";
      });

  // The policies: their C++ structs, fields read-write; -1 for `recent` means the policy's default.
  nb::class_<Dense>(m, "Dense",
                    "Keep everything: never evicts; the budget is the most tokens it holds (one more is an error).")
      .def(nb::init<>());
  nb::class_<Window>(m, "Window", "Keep the last `budget` tokens.").def(nb::init<>());
  nb::class_<SlidingWindowRecompute, Window>(
      m, "SlidingWindowRecompute",
      "Window attention rebuilt for every token: the engine re-prefills recompute_range(next, budget).")
      .def(nb::init<>())
      .def_static(
          "recompute_range",
          [](std::int64_t next, int budget) {
            const TokenRange r = SlidingWindowRecompute::recompute_range(next, budget);
            return std::make_tuple(r.begin, r.end);
          },
          "next"_a, "budget"_a, "The half-open range [begin, end) of tokens to re-prefill before token `next`.");
  nb::class_<StreamingLLM>(m, "StreamingLLM",
                           "Attention sinks + recent window, positions within the cache (Xiao et al., 2309.17453).")
      .def(nb::init<int>(), "sinks"_a = 4)
      .def_rw("sinks", &StreamingLLM::sinks);
  nb::class_<H2O>(m, "H2O", "Heavy hitters by accumulated attention + a recent window (Zhang et al., 2306.14048).")
      .def(
          "__init__",
          [](H2O* p, int recent, detail::GroupReduce reduce, bool normalized) {
            new (p) H2O();
            p->recent = recent;
            p->reduce = reduce;
            p->normalized = normalized;
          },
          "recent"_a = H2O::kHalfBudget, "reduce"_a = detail::GroupReduce::mean, "normalized"_a = false,
          "recent=-1: budget / 2.")
      .def_rw("recent", &H2O::recent)
      .def_rw("reduce", &H2O::reduce)
      .def_rw("normalized", &H2O::normalized);
  nb::class_<AhaKV>(m, "AhaKV", "Entropy-scaled (step-gain) attention score with a value-norm prior (AhaKV).")
      .def(
          "__init__",
          [](AhaKV* p, int window, int recent, int pool, double min_gain, double max_gain, bool recent_accumulation,
             bool step_gain, bool value_prior) {
            new (p) AhaKV();
            p->window = window;
            p->recent = recent;
            p->pool = pool;
            p->min_gain = min_gain;
            p->max_gain = max_gain;
            p->recent_accumulation = recent_accumulation;
            p->step_gain = step_gain;
            p->value_prior = value_prior;
          },
          "window"_a = 32, "recent"_a = AhaKV::kAuto, "pool"_a = 5, "min_gain"_a = 1.0, "max_gain"_a = 4.0,
          "recent_accumulation"_a = true, "step_gain"_a = true, "value_prior"_a = true,
          "recent=-1: min(window, budget / 2).")
      .def_rw("window", &AhaKV::window)
      .def_rw("recent", &AhaKV::recent)
      .def_rw("pool", &AhaKV::pool)
      .def_rw("min_gain", &AhaKV::min_gain)
      .def_rw("max_gain", &AhaKV::max_gain)
      .def_rw("recent_accumulation", &AhaKV::recent_accumulation)
      .def_rw("step_gain", &AhaKV::step_gain)
      .def_rw("value_prior", &AhaKV::value_prior);
  nb::class_<L2NormPy>(m, "L2Norm",
                       "Keep the lowest-norm keys (Devoto et al., 2406.11430); `skip_layers` are not compressed.")
      .def(
          "__init__",
          [](L2NormPy* p, int recent, std::vector<int> skip_layers, int uncompressed_budget) {
            L2Norm l2;
            l2.recent = recent;
            new (p) L2NormPy(l2, std::move(skip_layers), uncompressed_budget);
          },
          "recent"_a = 1, "skip_layers"_a = std::vector<int>{}, "uncompressed_budget"_a = 0)
      .def_prop_rw(
          "recent", [](const L2NormPy& p) { return p.recent; }, [](L2NormPy& p, int recent) { p.recent = recent; })
      .def_rw("skip_layers", &L2NormPy::skip_layers)
      .def_rw("uncompressed_budget", &L2NormPy::uncompressed_budget);
  nb::class_<SnapKV>(m, "SnapKV", "Votes of the last `window` queries, pooled over neighbours (Li et al., 2404.14469).")
      .def(
          "__init__",
          [](SnapKV* p, int window, int kernel, SnapKV::Pooling pooling, int recent) {
            new (p) SnapKV();
            p->window = window;
            p->kernel = kernel;
            p->pooling = pooling;
            p->recent = recent;
          },
          "window"_a = 32, "kernel"_a = 5, "pooling"_a = SnapKV::Pooling::average, "recent"_a = SnapKV::kAuto,
          "recent=-1: min(window, budget / 2).")
      .def_rw("window", &SnapKV::window)
      .def_rw("kernel", &SnapKV::kernel)
      .def_rw("pooling", &SnapKV::pooling)
      .def_rw("recent", &SnapKV::recent);
  nb::class_<TOVA>(m, "TOVA", "Evict what the newest query attends to least (Oren et al., 2401.06104).")
      .def(
          "__init__",
          [](TOVA* p, int recent) {
            new (p) TOVA();
            p->recent = recent;
          },
          "recent"_a = 1)
      .def_rw("recent", &TOVA::recent);

  // Compositions over a base policy.
  nb::class_<Composed>(m, "Composed", "A composition of the library over a base policy.")
      .def_prop_ro(
          "policy", [](const Composed& c) { return base_object(c.base); }, "The base policy.");
  nb::class_<ProtectedSpec, Composed>(m, "Protected",
                                      "`policy` that also keeps the first `sinks` and the newest `recent` tokens.")
      .def(
          "__init__",
          [](ProtectedSpec* p, nb::handle policy, int sinks, int recent) {
            new (p) ProtectedSpec{{Composed::Kind::protect, require_base(policy), Protect{sinks, recent}}};
          },
          "policy"_a, "sinks"_a = 0, "recent"_a = 0)
      .def_prop_ro("sinks", [](const ProtectedSpec& p) { return p.extra.sinks; })
      .def_prop_ro("recent", [](const ProtectedSpec& p) { return p.extra.recent; });
  nb::class_<PyramidSpec, Composed>(m, "Pyramid",
                                    "`policy` with PyramidKV's per-layer budgets (Cai et al., 2406.02069).")
      .def(
          "__init__",
          [](PyramidSpec* p, nb::handle policy, double beta) {
            new (p) PyramidSpec{{Composed::Kind::pyramid, require_base(policy), {}, beta}};
          },
          "policy"_a, "beta"_a = 20.0)
      .def_prop_ro("beta", [](const PyramidSpec& p) { return p.beta; });
  nb::class_<AdaptiveHeadsSpec, Composed>(
      m, "AdaptiveHeads", "`policy` (a score policy) whose kv heads share their layer's budget (AdaKV, 2407.11550).")
      .def(
          "__init__",
          [](AdaptiveHeadsSpec* p, nb::handle policy, double floor) {
            new (p) AdaptiveHeadsSpec{{Composed::Kind::adaptive_heads, require_base(policy), {}, 20.0, floor}};
          },
          "policy"_a, "floor"_a = 0.2)
      .def_prop_ro("floor", [](const AdaptiveHeadsSpec& p) { return p.floor; });
  nb::class_<CachePositionsSpec, Composed>(m, "CachePositions",
                                           "`policy` whose kept keys sit at their ranks in the cache (pos_shift).")
      .def(
          "__init__",
          [](CachePositionsSpec* p, nb::handle policy) {
            new (p) CachePositionsSpec{{Composed::Kind::cache_positions, require_base(policy)}};
          },
          "policy"_a);

  nb::class_<Rope>(m, "Rope", "Rotary position embedding over one head of width head_dim (angles in double).")
      .def(nb::init<int, double, RopeLayout>(), "head_dim"_a, "theta"_a = 10000.0, "layout"_a = RopeLayout::adjacent)
      .def_prop_ro("head_dim", &Rope::head_dim)
      .def_prop_ro("layout", &Rope::layout)
      .def(
          "rotate",
          [](const Rope& rope, const InArray& x, const InArray& positions) {
            return x.dtype() == nb::dtype<double>() ? rope_rotate<double>(rope, x, positions)
                                                    : rope_rotate<float>(rope, x, positions);
          },
          nb::sig("def rotate(self, x: NDArray[numpy.float32] | NDArray[numpy.float64], "
                  "positions: NDArray[numpy.integer]) -> NDArray[numpy.float32] | NDArray[numpy.float64]"),
          "x"_a, "positions"_a,
          "A copy of x (T x k*head_dim, float32 or float64) with every head of row t rotated by positions[t].");

  nb::class_<Cache>(
      m, "Cache",
      "A KV cache that owns its K/V and evicts through a policy: kvevict::KVCache<Storage, Policy>.\n\n"
      "Arrays hold one token per row with heads side by side: keys/values T x (n_kv_heads * "
      "head_dim), queries/out T x (n_q_heads * head_dim), float32 (float64 with kv_type='f64'); a 1-D array "
      "is one token.")
      .def(
          "__init__",
          [](Cache* c, const Shape& shape, nb::handle policy, const std::string& kv_type, int max_chunk, int max_prompt,
             Normalization normalization, double scale, const std::optional<std::vector<double>>& sink_logits,
             const std::optional<Rope>& rope, bool check_finite, double max_bytes) {
            CacheOptions options;
            options.max_chunk = max_chunk;
            options.max_prompt = max_prompt;
            options.attention = attention_options(normalization, scale, sink_logits);
            if (rope) options.rope = *rope;
            options.check_finite = check_finite;
            options.max_bytes = max_bytes;
            nb::object chosen = policy.is_none() ? nb::cast(Dense{}) : nb::borrow(policy);
            const KvType type = kv_type_of(kv_type);
            std::unique_ptr<AnyCacheBase> impl;  // built first: a throw leaves nothing half made
            AnyCache* f32 = nullptr;
            AnyCache64* f64 = nullptr;
            if (type == KvType::f64) {
              auto made = make_cache_f64(shape, spec_of(chosen), options);
              f64 = made.get();
              impl = std::move(made);
            } else {
              auto made = make_cache(shape, spec_of(chosen), type, options);
              f32 = made.get();
              impl = std::move(made);
            }
            new (c) Cache{std::move(impl), f32, f64, chosen};
          },
          "shape"_a, "policy"_a = nb::none(), "kv_type"_a = "f32", "max_chunk"_a = 64, "max_prompt"_a = 0,
          "normalization"_a = Normalization::softmax, "scale"_a = 0.0, "sink_logits"_a = nb::none(),
          "rope"_a = nb::none(), "check_finite"_a = false, "max_bytes"_a = 64.0 * (1 << 30),
          "policy: a kvevict policy (default Dense()); kv_type: 'f32', 'f16' or 'bf16' (K/V storage; arrays in "
          "and out are float32) or 'f64' (float64 arrays); max_chunk: most tokens one append may add; max_prompt: "
          "prompt compression (append and attend "
          "a whole prompt in chunks, then evict once); scale <= 0: 1/sqrt(head_dim); rope: a Rope the cache applies "
          "to keys and queries at the positions the policy implies; check_finite: reject NaN/Inf inputs.")
      .def_prop_ro("shape", &Cache::shape)
      .def_prop_ro("policy", [](const Cache& c) { return c.policy; })
      .def_prop_ro("kv_type", [](const Cache& c) { return std::string(kv_type_name(c.impl->kv_type())); })
      .def_prop_ro("max_chunk", [](const Cache& c) { return c.impl->options().max_chunk; })
      .def(
          "capacity", [](const Cache& c, int layer) { return c.impl->capacity(layer); }, "layer"_a = 0,
          "Slots per head of `layer`: its budget plus max(max_chunk, max_prompt).")
      .def(
          "n_seen", [](const Cache& c, int layer) { return c.impl->n_seen(layer); }, "layer"_a,
          "Tokens appended to `layer` so far; the next one gets this position.")
      .def(
          "size", [](const Cache& c, int layer, int kv_head) { return c.impl->size(layer, kv_head); }, "layer"_a,
          "kv_head"_a, "Tokens held by (layer, kv_head).")
      .def("forward", &forward,
           nb::sig("def forward(self, layer: int, queries: NDArray[numpy.floating], keys: NDArray[numpy.floating], "
                   "values: NDArray[numpy.floating], out: NDArray[numpy.floating] | None = None) "
                   "-> NDArray[numpy.floating]"),
           "layer"_a, "queries"_a, "keys"_a, "values"_a, "out"_a = nb::none(),
           "One model step for one layer: append the chunk's keys and values, attend its queries over everything "
           "held, evict back to the budget. Returns the attention output (`out` if given).")
      .def("append", &append, "layer"_a, "keys"_a, "values"_a,
           "Stores T tokens at positions n_seen(layer) ... n_seen(layer) + T - 1.")
      .def("attend", &attend,
           nb::sig(
               "def attend(self, layer: int, queries: NDArray[numpy.floating], out: NDArray[numpy.floating] | None = "
               "None) -> NDArray[numpy.floating]"),
           "layer"_a, "queries"_a, "out"_a = nb::none(),
           "Attends the queries of the chunk appended last over everything held; shows the weights to the policy.")
      .def(
          "evict",
          [](Cache& c, int layer) {
            nb::gil_scoped_release release;
            c.impl->evict(layer);
          },
          "layer"_a, "Evicts every head of `layer` back to the budget.")
      .def(
          "clear", [](Cache& c) { c.impl->clear(); }, "Forgets every token; the next append is at position 0 again.")
      .def(
          "positions",
          [](const Cache& c, int layer, int kv_head) {
            return per_held<std::int64_t>(c.held(layer, kv_head),
                                          [](const Held& h, std::size_t) { return h.position; });
          },
          "layer"_a, "kv_head"_a, "Positions (in the stream) of the tokens (layer, kv_head) holds, ascending.")
      .def(
          "slots",
          [](const Cache& c, int layer, int kv_head) {
            return per_held<std::int32_t>(c.held(layer, kv_head), [](const Held& h, std::size_t) { return h.slot; });
          },
          "layer"_a, "kv_head"_a, "The slot of each token of positions(layer, kv_head).")
      .def(
          "rotated_at",
          [](const Cache& c, int layer, int kv_head) {
            return per_held<std::int64_t>(c.held(layer, kv_head),
                                          [](const Held& h, std::size_t) { return h.rotated_at; });
          },
          "layer"_a, "kv_head"_a,
          "The position each held key is rotated at: positions() for most policies, the rank within the cache for "
          "StreamingLLM and CachePositions.")
      .def(
          "scores",
          [](const Cache& c, int layer, int kv_head) -> std::optional<NumpyArray<double>> {
            if (!c.impl->has_scores()) {
              c.check_layer(layer);
              return std::nullopt;
            }
            return per_held<double>(c.held(layer, kv_head),
                                    [&](const Held& h, std::size_t) { return c.impl->score(layer, kv_head, h.slot); });
          },
          "layer"_a, "kv_head"_a,
          "The policy's score of each token of positions(layer, kv_head) (the lowest leaves first), or None for "
          "policies that evict by age (Dense, Window, StreamingLLM, SlidingWindowRecompute).")
      .def(
          "kept_keys", [](Cache& c, int layer, int kv_head) { return kept_rows(c, layer, kv_head, true); }, "layer"_a,
          "kv_head"_a,
          "The held keys in the order of positions(), as float32 (converted from 16-bit storage), rotated as stored.")
      .def(
          "kept_values", [](Cache& c, int layer, int kv_head) { return kept_rows(c, layer, kv_head, false); },
          "layer"_a, "kv_head"_a, "The held values in the order of positions(), in the compute type.")
      .def("__repr__", [](const Cache& c) {
        return std::string("Cache(") + nb::repr(nb::cast(c.shape())).c_str() +
               ", policy=" + nb::repr(c.policy).c_str() + ", kv_type='" + kv_type_name(c.impl->kv_type()) + "')";
      });

  nb::class_<PyEvictor>(m, "Evictor",
                        "The bookkeeping of one (layer, kv head) for K/V kept elsewhere: kvevict::Evictor<Policy>.\n\n"
                        "Rule 1: write the token's rows at next_free_slot(), then admit(). Rule 2: after attention, "
                        "observe() the weights. Rule 3: evict_one() while over_budget (or evict_to_budget()).")
      .def(
          "__init__",
          [](PyEvictor* e, nb::handle policy, int budget, int head_dim, int group_size, std::optional<int> capacity,
             int layer, int n_layers, int kv_head) {
            const HeadContext ctx = HeadContext{}
                                        .with_layer(layer, n_layers)
                                        .with_kv_head(kv_head)
                                        .with_budget(budget)
                                        .with_capacity(capacity ? *capacity : budget + 1)
                                        .with_head_dim(head_dim)
                                        .with_group_size(group_size);
            new (e) PyEvictor{make_evictor(spec_of(policy), ctx), nb::borrow(policy)};
          },
          "policy"_a, "budget"_a, "head_dim"_a, "group_size"_a = 1, "capacity"_a = nb::none(), "layer"_a = 0,
          "n_layers"_a = 1, "kv_head"_a = 0, "capacity: slots of the caller's memory (default budget + 1).")
      .def_prop_ro("policy", [](const PyEvictor& e) { return e.policy; })
      .def_prop_ro("budget", [](const PyEvictor& e) { return e.impl->context().budget; })
      .def_prop_ro("capacity", [](const PyEvictor& e) { return e.impl->context().capacity; })
      .def_prop_ro("size", [](const PyEvictor& e) { return e.impl->slots().size(); })
      .def_prop_ro("over_budget", [](const PyEvictor& e) { return e.impl->over_budget(); })
      .def_prop_ro("protection", [](const PyEvictor& e) { return e.impl->protection(); })
      .def_prop_ro(
          "needs_logits", [](const PyEvictor& e) { return e.impl->needs_logits(); },
          "Whether observe() must be given the logits too (AhaKV).")
      .def_prop_ro(
          "moves_positions", [](const PyEvictor& e) { return e.impl->moves_positions(); },
          "Whether kept keys move to their rank in the cache as tokens leave (see rotated_at()).")
      .def(
          "next_free_slot", [](const PyEvictor& e) { return e.impl->next_free_slot(); },
          "The slot the next admit() fills; -1 when full.")
      .def(
          "admit",
          [](PyEvictor& e, std::int64_t position, const InArray& key, const InArray& value) {
            Rows<float> k, v;
            view_rows(key, "key", k);
            view_rows(value, "value", v);
            const int d = e.impl->context().head_dim;
            if (k.map.size() != d)
              value_error("key", std::to_string(d) + " values (head_dim)", std::to_string(k.map.size()));
            if (v.map.size() != d)
              value_error("value", std::to_string(d) + " values (head_dim)", std::to_string(v.map.size()));
            if (k.map.rows() > 1 && k.map.outerStride() != d) k.copy = k.map;  // one row in any case
            return e.impl->admit(position, k.copy.size() ? k.copy.data() : k.map.data(),
                                 v.copy.size() ? v.copy.data() : v.map.data());
          },
          "position"_a, "key"_a, "value"_a,
          "Records the token at `position` whose rows the caller stored at next_free_slot(); returns that slot.")
      .def("observe", &observe, "weights"_a, "query_positions"_a, "scale"_a = nb::none(), "logits"_a = nb::none(),
           "Shows one group's attention to the policy: weights (n_queries * group_size) x capacity, row t * group + "
           "h for query head h of query token t, column = slot (0 where masked); logits likewise (AhaKV).")
      .def(
          "evict_one",
          [](PyEvictor& e) {
            const auto ev = e.impl->evict_one();
            return std::make_tuple(ev.slot, ev.position, ev.n_shifted);
          },
          "Frees the policy's victim: returns (slot, position, n_shifted).")
      .def(
          "evict_to_budget", [](PyEvictor& e) { e.impl->evict_to_budget(); },
          "evict_one() while over_budget, in one pass for a score policy.")
      .def("clear", [](PyEvictor& e) { e.impl->clear(); })
      .def(
          "protects",
          [](const PyEvictor& e, std::int64_t position, std::int64_t newest) {
            return e.impl->protection().covers(position, newest);
          },
          "position"_a, "newest"_a)
      .def(
          "positions", [](const PyEvictor& e) { return per_slot_positions(e.impl->slots(), false); },
          "Per slot, the position of the token it holds; -1 where free.")
      .def(
          "rotated_at", [](const PyEvictor& e) { return per_slot_positions(e.impl->slots(), true); },
          "Per slot, the position its key should be rotated at; -1 where free.")
      .def(
          "scores",
          [](const PyEvictor& e) -> std::optional<NumpyArray<double>> {
            if (!e.impl->has_scores()) return std::nullopt;
            const SlotTable& slots = e.impl->slots();
            auto a = new_array<double>({std::size_t(slots.capacity())});
            for (int s = 0; s < slots.capacity(); ++s)
              a.data()[s] = slots.occupied(s) ? e.impl->score(s) : std::numeric_limits<double>::quiet_NaN();
            return a;
          },
          "Per slot, the policy's score (NaN where free), or None for policies that evict by age.");

  m.def(
      "attention",
      [](const InArray& queries, const InArray& keys, const InArray& values, int n_q_heads, int n_kv_heads,
         const std::optional<InArray>& query_positions, const std::optional<InArray>& key_positions,
         Normalization normalization, double scale, const std::optional<std::vector<double>>& sink_logits) {
        const auto options = attention_options(normalization, scale, sink_logits);
        if (queries.dtype() == nb::dtype<double>())
          return attention_in<double>(queries, keys, values, n_q_heads, n_kv_heads, query_positions, key_positions,
                                      options);
        return attention_in<float>(queries, keys, values, n_q_heads, n_kv_heads, query_positions, key_positions,
                                   options);
      },
      nb::sig("def attention(queries: NDArray[numpy.floating], keys: NDArray[numpy.floating], "
              "values: NDArray[numpy.floating], n_q_heads: int, n_kv_heads: int, "
              "query_positions: NDArray[numpy.integer] | None = None, key_positions: NDArray[numpy.integer] | None = "
              "None, normalization: Normalization = Normalization.softmax, scale: float = 0.0, "
              "sink_logits: Sequence[float] | None = None) -> NDArray[numpy.floating]"),
      "queries"_a, "keys"_a, "values"_a, "n_q_heads"_a, "n_kv_heads"_a, "query_positions"_a = nb::none(),
      "key_positions"_a = nb::none(), "normalization"_a = Normalization::softmax, "scale"_a = 0.0,
      "sink_logits"_a = nb::none(),
      "The reference attention (causal, GQA/MQA/MHA): queries T x (n_q_heads * d), keys/values N x (n_kv_heads * d), "
      "all float32 or all float64. Key j is visible to query t iff key_positions[j] <= query_positions[t]; by "
      "default keys are at 0..N-1 and the queries are the last T of them.");

  nb::class_<HeadMerge>(m, "HeadMerge", "The linear maps of a KV head merge, head_dim x head_dim each.")
      .def_ro("n_kv_heads", &HeadMerge::n_kv_heads)
      .def_ro("n_merged", &HeadMerge::n_merged)
      .def_ro("head_dim", &HeadMerge::head_dim)
      .def_prop_ro("group", &HeadMerge::group, "Original kv heads per merged head.")
      .def_prop_ro(
          "key_in", [](const HeadMerge& h) { return maps(h.key_in); },
          "[merged * group + member]: a member's key (or a query reading it) into the merged head's space.")
      .def_prop_ro(
          "value_in", [](const HeadMerge& h) { return maps(h.value_in); },
          "[merged * group + member]: a member's value into the merged head's space.")
      .def_prop_ro(
          "value_out", [](const HeadMerge& h) { return maps(h.value_out); },
          "[merged * group + member]: a merged value back to the member's space.");
  m.def(
      "fit_head_merge",
      [](const InArray& keys, const InArray& values, int n_kv_heads, int n_merged, int head_dim, RopeLayout layout,
         HeadMergeMethod method) {
        return fit_head_merge(calibration(keys, "keys"), calibration(values, "values"), n_kv_heads, n_merged, head_dim,
                              layout, method);
      },
      "keys"_a, "values"_a, "n_kv_heads"_a, "n_merged"_a, "head_dim"_a, "layout"_a = RopeLayout::adjacent,
      "method"_a = HeadMergeMethod::svd,
      "Fits a merge of n_kv_heads kv heads into n_merged from one layer's calibration keys and values, "
      "N x (n_kv_heads * head_dim) (Yu et al., 2406.07056).");
  nb::class_<HeadMergeError>(m, "HeadMergeError", "What a merge cannot reconstruct of calibration K/V.")
      .def_ro("keys", &HeadMergeError::keys, "Share of the keys' squared norm lost, in [0, 1].")
      .def_ro("values", &HeadMergeError::values, "Share of the values' squared norm lost, in [0, 1].")
      .def("__repr__", [](const HeadMergeError& e) {
        return "HeadMergeError(keys=" + std::to_string(e.keys) + ", values=" + std::to_string(e.values) + ")";
      });
  m.def(
      "head_merge_error",
      [](const InArray& keys, const InArray& values, const HeadMerge& merge) {
        return head_merge_error(calibration(keys, "keys"), calibration(values, "values"), merge);
      },
      "keys"_a, "values"_a, "merge"_a,
      "The share of calibration keys and values (N x (n_kv_heads * head_dim)) that the merged heads cannot "
      "reconstruct: 0 for heads that merge exactly.");
  m.def(
      "repair_output_projection",
      [](const InArray& attention, const InArray& target, const InArray& projection, double ridge) {
        return to_numpy(repair_output_projection(calibration(attention, "attention"), calibration(target, "target"),
                                                 calibration(projection, "projection"), ridge));
      },
      "attention"_a, "target"_a, "projection"_a, "ridge"_a = 1e-3,
      "The output projection W (n_out x n_in) minimising |attention W^T - target|^2 + lambda |W - projection|^2, "
      "lambda = ridge * trace(attention^T attention) / n_in: a merged layer's training-free repair from its "
      "attention outputs (N x n_in) and the original layer's outputs (N x n_out). Its calibration error never "
      "exceeds that of `projection`.");
}
