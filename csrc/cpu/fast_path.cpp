// The fused modules' per-call fast path (issue 14), C++ side: one pass over the facts a module's last fused
// call was decided on (mnv2_kernels/modules.py, _FastPath), and direct calls of the CPU ops.
//
// Why: in Python, the per-call checks of a fused block (modes, hooks, children, geometry, the identity,
// address and version counter of every folded-from tensor) cost ~35 us, and calling the op through
// torch.ops another ~10 us (argument parsing against the schema, boxing): ~0.8 ms of a ~6 ms batch-1
// MobileNetV2 forward. The same checks on the CPython objects directly cost ~1 us.
//
// mnv2_kernels._C.fast_valid(nodes, attrs, dicts, tensors) -> bool
//   nodes  : tuple of (module.__dict__, module._modules, children tuple, mode_matters: bool)
//            valid while: not (mode_matters and training), no forward hooks / pre-hooks, no instance-level
//            "forward", _modules is the same dict holding the same children (identity, same order)
//   attrs  : tuple of (dict, name, value): dict[name] == value; value is the `missing` sentinel when the
//            name must stay absent
//   dicts  : tuple of (dict, values tuple): same length, same values (identity, same order)
//   tensors: tuple of (tensor, data_ptr, version): same data address and version counter (a tensor without
//            a version counter, an inference tensor, is never valid)
// Any object of an unexpected type makes it return False (the caller then runs its full checks).
//
// mnv2_kernels._C.inverted_residual_cpu / conv3x3_bias_act_cpu / dense_bias_act_cpu / dense_relu6_mean_cpu:
// the CPU ops' kernels called straight from Python, without the dispatcher. Only for the fast path, which
// takes them only for plain torch.Tensor inputs on the CPU with gradients off and no torch function /
// dispatch mode active (what the dispatcher would have done then is exactly this call).
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

namespace mnv2 {

at::Tensor inverted_residual_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& w_expand,
                                 const c10::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                 const at::Tensor& b_dw, const at::Tensor& w_project, const at::Tensor& b_project,
                                 int64_t stride, bool residual);
at::Tensor conv3x3_bias_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                                bool relu6);
at::Tensor dense_bias_act_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, bool relu6);
at::Tensor dense_relu6_mean_cpu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
at::Tensor stem_inverted_residual_cpu(const at::Tensor& x, const at::Tensor& w_stem, const at::Tensor& b_stem,
                                      int64_t stem_stride, bool stem_relu6, const at::Tensor& w_dw,
                                      const at::Tensor& b_dw, const at::Tensor& w_project,
                                      const at::Tensor& b_project, int64_t stride, bool residual);

namespace {

PyObject* g_missing = nullptr;  // the `missing` sentinel (set by set_fast_missing)

bool tuple_n(PyObject* o, Py_ssize_t n) { return PyTuple_Check(o) && PyTuple_GET_SIZE(o) == n; }

// dict d holds exactly the objects of tuple vals, in order (identity).
bool same_values(PyObject* d, PyObject* vals) {
  if (!PyDict_Check(d) || !PyTuple_Check(vals) || PyDict_GET_SIZE(d) != PyTuple_GET_SIZE(vals)) return false;
  Py_ssize_t pos = 0, i = 0;
  PyObject *k, *v;
  while (PyDict_Next(d, &pos, &k, &v)) {
    if (v != PyTuple_GET_ITEM(vals, i++)) return false;
  }
  return true;
}

// Interned attribute names (looked up with their cached hashes).
PyObject* name_obj(const char* s) {
  PyObject* o = PyUnicode_InternFromString(s);  // a new reference, kept for the life of the process
  return o;
}

bool nonempty_dict_item(PyObject* md, PyObject* name, bool* nonempty) {
  PyObject* h = PyDict_GetItem(md, name);  // borrowed
  if (h == nullptr) return false;
  if (PyDict_Check(h)) *nonempty = PyDict_GET_SIZE(h) != 0;
  else *nonempty = PyObject_IsTrue(h) != 0;  // an OrderedDict subclass is a dict; anything else: truthiness
  return true;
}

bool fast_valid(pybind11::handle nodes_h, pybind11::handle attrs_h, pybind11::handle dicts_h,
                pybind11::handle tensors_h) {
  PyObject* nodes = nodes_h.ptr();
  PyObject* attrs = attrs_h.ptr();
  PyObject* dicts = dicts_h.ptr();
  PyObject* tensors = tensors_h.ptr();
  if (!PyTuple_Check(nodes) || !PyTuple_Check(attrs) || !PyTuple_Check(dicts) || !PyTuple_Check(tensors)) {
    return false;
  }
  static PyObject* const k_training = name_obj("training");
  static PyObject* const k_hooks = name_obj("_forward_hooks");
  static PyObject* const k_pre_hooks = name_obj("_forward_pre_hooks");
  static PyObject* const k_forward = name_obj("forward");
  static PyObject* const k_modules = name_obj("_modules");
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(nodes); ++i) {
    PyObject* n = PyTuple_GET_ITEM(nodes, i);
    if (!tuple_n(n, 4)) return false;
    PyObject* md = PyTuple_GET_ITEM(n, 0);
    if (!PyDict_Check(md)) return false;
    if (PyTuple_GET_ITEM(n, 3) == Py_True) {
      PyObject* tr = PyDict_GetItem(md, k_training);
      if (tr == nullptr || tr != Py_False) return false;
    }
    bool busy = false;
    if (!nonempty_dict_item(md, k_hooks, &busy) || busy) return false;
    if (!nonempty_dict_item(md, k_pre_hooks, &busy) || busy) return false;
    if (PyDict_GetItem(md, k_forward) != nullptr) return false;
    PyObject* mods = PyTuple_GET_ITEM(n, 1);
    if (PyDict_GetItem(md, k_modules) != mods) return false;
    if (!same_values(mods, PyTuple_GET_ITEM(n, 2))) return false;
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(attrs); ++i) {
    PyObject* a = PyTuple_GET_ITEM(attrs, i);
    if (!tuple_n(a, 3) || !PyDict_Check(PyTuple_GET_ITEM(a, 0))) return false;
    PyObject* cur = PyDict_GetItemWithError(PyTuple_GET_ITEM(a, 0), PyTuple_GET_ITEM(a, 1));  // borrowed
    if (cur == nullptr && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    PyObject* want = PyTuple_GET_ITEM(a, 2);
    if (want == g_missing) {
      if (cur != nullptr) return false;
      continue;
    }
    if (cur == nullptr) return false;
    if (cur == want) continue;
    const int eq = PyObject_RichCompareBool(cur, want, Py_EQ);
    if (eq != 1) {
      if (eq < 0) PyErr_Clear();
      return false;
    }
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(dicts); ++i) {
    PyObject* dv = PyTuple_GET_ITEM(dicts, i);
    if (!tuple_n(dv, 2) || !same_values(PyTuple_GET_ITEM(dv, 0), PyTuple_GET_ITEM(dv, 1))) return false;
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tensors); ++i) {
    PyObject* e = PyTuple_GET_ITEM(tensors, i);
    if (!tuple_n(e, 3)) return false;
    PyObject* to = PyTuple_GET_ITEM(e, 0);
    if (!THPVariable_Check(to)) return false;
    const at::Tensor& t = THPVariable_Unpack(to);
    if (!t.defined() || t.is_inference()) return false;
    const long long ptr = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 1));
    const long long ver = PyLong_AsLongLong(PyTuple_GET_ITEM(e, 2));
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    if ((long long)t._version() != ver || (long long)reinterpret_cast<intptr_t>(t.data_ptr()) != ptr) return false;
  }
  return true;
}

void set_fast_missing(pybind11::handle missing) {
  Py_XINCREF(missing.ptr());  // kept for the life of the process
  g_missing = missing.ptr();
}

}  // namespace

void register_fast_path(pybind11::module& m) {
  m.def("fast_valid", &fast_valid,
        "True when every fact of a fused module's last fused call still holds (mnv2_kernels/modules.py, "
        "_FastPath; csrc/cpu/fast_path.cpp says which facts); False means: run the full checks.");
  m.def("set_fast_missing", &set_fast_missing, "Sets the sentinel fast_valid reads as 'attribute absent'.");
  m.def("inverted_residual_cpu", &inverted_residual_cpu,
        "mnv2::inverted_residual's CPU kernel without the dispatcher (the modules' fast path only).");
  m.def("conv3x3_bias_act_cpu", &conv3x3_bias_act_cpu, "mnv2::conv3x3_bias_act's CPU kernel, no dispatcher.");
  m.def("dense_bias_act_cpu", &dense_bias_act_cpu, "mnv2::dense_bias_act's CPU kernel, no dispatcher.");
  m.def("dense_relu6_mean_cpu", &dense_relu6_mean_cpu, "mnv2::dense_relu6_mean's CPU kernel, no dispatcher.");
  m.def("stem_inverted_residual_cpu", &stem_inverted_residual_cpu,
        "mnv2::stem_inverted_residual's CPU kernel, no dispatcher.");
}

}  // namespace mnv2
