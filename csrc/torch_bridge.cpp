// Zero-copy views between engine arrays (numpy, CuPy) and torch tensors: the C++ half of the PyTorch bridge.
//
// Compiled on first use by megengine/module/pytorch/_bridge.py (torch.utils.cpp_extension.load), which
// documents the semantics. Functions:
//   to_torch(array) -> torch.Tensor                  view of a numpy array's memory; the tensor's storage
//                                                    holds a reference to the array. Other objects with
//                                                    __cuda_array_interface__ go to the Python CUDA handler.
//   from_torch(tensor) -> numpy.ndarray              view of a CPU tensor's memory; the array's base holds
//                                                    the tensor's storage. CUDA tensors go to the handler.
//   cuda_to_torch(owner, cai, device) -> Tensor      view of a CUDA array from its __cuda_array_interface__
//                                                    dict, for the handler; stream ordering is its job
//   set_cuda_handlers(to_torch, from_torch)          registers the two Python CUDA handlers
//   hand_over(grads, slots, result, taken, min_numel, fresh)
//                                                    PyTorchModule's backward: torch's CPU gradients
//                                                    as arrays megengine may keep (see the function)
//   sgd_step(params, grads, lr, max_numel) -> list   optimizer.SGD's plain update of numpy arrays,
//                                                    numpy's rounding (see the function)
//   ce_rows(pred, label) -> (e, s, loss) or None     F.nn.cross_entropy's mean over narrow (N, C) rows
//   ce_rows_grad(e, s, label, g) -> grad or None     and its gradient, on the host (see the functions)
//
// Why it is written against the plain CPython and numpy C APIs rather than pybind11 and torch's Python
// headers: build time. torch/csrc/autograd/python_variable.h alone takes ~26 s to compile on a 2-core
// machine and pybind11 ~12 s; this file, with only ATen's from_blob, builds in a fraction of that. The
// price is three torch Python-binding names used without their header, the same ones torch's own
// pybind11 caster uses: THPVariableClass (the torch.Tensor type), THPVariable_Wrap (at::Tensor ->
// torch.Tensor) and the Tensor._cdata attribute (the address of its TensorImpl). If a torch release
// renamed one, importing the module fails naming the symbol. The CUDA branch needs no CUDA header
// (from_blob only needs a c10::Device), so the same source builds against CPU-only and CUDA torch.
//
// The hot functions are METH_O: no argument parsing at all on the call path.

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/SmallVector.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

// From libtorch_python (declared in torch/csrc/autograd/python_variable.h, which we avoid including).
extern PyObject* THPVariableClass;
// Its parameter changed type: a value up to torch 2.5, const& since 2.6 (2.11 adds a && overload).
// The declaration must match the library's symbol, or loading fails on an undefined symbol.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6)
PyObject* THPVariable_Wrap(const at::TensorBase& var);
#else
PyObject* THPVariable_Wrap(at::TensorBase var);
#endif

#define MGE_STRINGIZE_IMPL(x) #x
#define MGE_STRINGIZE(x) MGE_STRINGIZE_IMPL(x)

namespace {

using Dims = c10::SmallVector<int64_t, 8>;

const char* const kSupported = "float16, float32, float64, int8, int16, int32, int64, uint8, bool";
const char* const kCapsuleName = "megengine.torch_bridge.storage";
PyObject* cdata_name = nullptr;  // interned "_cdata"
PyObject* cai_name = nullptr;    // interned "__cuda_array_interface__"
// Python callables for CUDA objects (array -> tensor, tensor -> array); the C++ side checks and
// dispatches so the CPU path pays for no Python-level test. Set once by _bridge.py.
PyObject* cuda_to_torch_handler = nullptr;
PyObject* cuda_from_torch_handler = nullptr;

// A Python exception to raise: thrown from anywhere below, turned into the Python error by `guarded`.
struct PyError : std::runtime_error {
  PyObject* type;
  PyError(PyObject* type, const std::string& message) : std::runtime_error(message), type(type) {}
};
// The Python error indicator is already set (a C-API call failed).
struct PyErrorSet {};

// Owns the new reference a C-API call returned; a nullptr result means that call raised.
struct OwnedRef {
  PyObject* const ptr;
  explicit OwnedRef(PyObject* p) : ptr(p) {
    if (p == nullptr) throw PyErrorSet{};
  }
  ~OwnedRef() { Py_DECREF(ptr); }
  OwnedRef(const OwnedRef&) = delete;
  OwnedRef& operator=(const OwnedRef&) = delete;
};

std::string str_of(PyObject* obj) {
  OwnedRef s(PyObject_Str(obj));
  const char* utf8 = PyUnicode_AsUTF8(s.ptr);
  if (utf8 == nullptr) throw PyErrorSet{};
  return utf8;
}

// ---------------------------------------------------------------------------------------------------------
// dtypes

// numpy (kind, itemsize, byteorder) -> torch scalar type; `name()` names the dtype in error messages.
template <class Name>
at::ScalarType scalar_type_of(char kind, int64_t itemsize, char byteorder, Name&& name) {
  // '=' native, '|' not applicable, '<' little-endian: torch runs on little-endian machines only
  if (byteorder == '>') {
    throw PyError(PyExc_TypeError, "megengine torch bridge: dtype " + name() +
                                       " is big-endian, which torch cannot view; convert it first, e.g. "
                                       "a.astype(a.dtype.newbyteorder('='))");
  }
  switch (kind) {
    case 'b':
      if (itemsize == 1) return at::kBool;
      break;
    case 'u':
      if (itemsize == 1) return at::kByte;
      break;
    case 'i':
      if (itemsize == 1) return at::kChar;
      if (itemsize == 2) return at::kShort;
      if (itemsize == 4) return at::kInt;
      if (itemsize == 8) return at::kLong;
      break;
    case 'f':
      if (itemsize == 2) return at::kHalf;
      if (itemsize == 4) return at::kFloat;
      if (itemsize == 8) return at::kDouble;
      break;
  }
  throw PyError(PyExc_TypeError, "megengine torch bridge: dtype " + name() + " is not supported (supported: " +
                                     kSupported + "); cast the array first, e.g. a.astype(numpy.float32)");
}

// torch scalar type -> numpy type number; `tensor` is only used to name its dtype in errors.
int numpy_typenum_of(at::ScalarType st, PyObject* tensor) {
  switch (st) {
    case at::kBool: return NPY_BOOL;
    case at::kByte: return NPY_UINT8;
    case at::kChar: return NPY_INT8;
    case at::kShort: return NPY_INT16;
    case at::kInt: return NPY_INT32;
    case at::kLong: return NPY_INT64;
    case at::kHalf: return NPY_FLOAT16;
    case at::kFloat: return NPY_FLOAT32;
    case at::kDouble: return NPY_FLOAT64;
    case at::kBFloat16:
      throw PyError(PyExc_TypeError,
                    "megengine torch bridge: torch.bfloat16 has no numpy dtype, so the tensor cannot be viewed "
                    "as an engine array; cast it first, e.g. t.float() (or t.half())");
    default: {
      const std::string name = str_of(OwnedRef(PyObject_GetAttrString(tensor, "dtype")).ptr);  // "torch.complex64"
      throw PyError(PyExc_TypeError, "megengine torch bridge: " + name + " is not supported (supported: " +
                                         kSupported + "); cast the tensor first, e.g. t.float()");
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// array -> tensor

// The strides (in elements) torch gets for a view of `sizes` given byte strides. Dimensions of size 1
// carry no information and numpy leaves arbitrary values there (a fancy-indexed (N, 1, H, W) array can
// look channels-last to torch); they get what torch's own contiguous layout would give them,
// stride[d + 1] * size[d + 1], so torch sees the layout it would have made itself. An empty array gets
// contiguous strides throughout. Returns false when a dimension of size > 1 has a negative stride, which
// torch cannot represent (the caller copies).
bool torch_strides(const Dims& sizes, const Py_ssize_t* byte_strides, int64_t itemsize, Dims& strides) {
  const int64_t ndim = static_cast<int64_t>(sizes.size());
  const bool empty = std::find(sizes.begin(), sizes.end(), 0) != sizes.end();
  strides.resize(ndim);
  int64_t contiguous = 1;  // torch's contiguous stride for dimension d
  for (int64_t d = ndim - 1; d >= 0; --d) {
    if (empty || sizes[d] == 1) {
      strides[d] = contiguous;
    } else {
      if (byte_strides[d] < 0) return false;
      if (byte_strides[d] % itemsize != 0) {
        throw PyError(PyExc_ValueError, "megengine torch bridge: a stride of " + std::to_string(byte_strides[d]) +
                                            " bytes is not a multiple of the item size " +
                                            std::to_string(itemsize) + "; copy the array first (a.copy())");
      }
      strides[d] = byte_strides[d] / itemsize;
    }
    contiguous = strides[d] * std::max<int64_t>(sizes[d], 1);
  }
  return true;
}

// The tensor's storage holds one reference to `owner`; this drops it when torch frees the storage.
// torch may free storage on any thread (autograd workers, DataLoader pin threads), with or without the
// GIL, so take it. After the interpreter is gone (exit-time destructors) there is nothing left to drop.
void release_owner(void* owner) {
  if (!Py_IsInitialized()) return;
  PyGILState_STATE gil = PyGILState_Ensure();
  Py_DECREF(static_cast<PyObject*>(owner));
  PyGILState_Release(gil);
}

at::Tensor view_as_tensor(void* data, const Dims& sizes, const Dims& strides, at::ScalarType st, at::Device device,
                          PyObject* owner) {
  // From .context() on, the reference taken here belongs to TensorMaker (a unique_ptr) and then to the
  // storage's DataPtr; if make_tensor throws, whichever holds it drops it. A context with a plain
  // function pointer rather than a std::function deleter saves a heap allocation per call.
  Py_INCREF(owner);
  return at::for_blob(data, sizes)
      .strides(strides)
      .context(owner, &release_owner)
      .target_device(device)
      .options(at::TensorOptions().dtype(st).device(device))
      .make_tensor();
}

at::Tensor array_to_tensor(PyObject* obj) {
  auto* array = reinterpret_cast<PyArrayObject*>(obj);
  PyArray_Descr* descr = PyArray_DESCR(array);
  const int64_t itemsize = PyArray_ITEMSIZE(array);
  const at::ScalarType st = scalar_type_of(descr->kind, itemsize, descr->byteorder,
                                           [&] { return str_of(reinterpret_cast<PyObject*>(descr)); });
  if (!PyArray_ISALIGNED(array)) {
    throw PyError(PyExc_ValueError, "megengine torch bridge: the array's data is not aligned to its item size, "
                                    "which torch cannot view; copy the array first (a.copy())");
  }
  const int ndim = PyArray_NDIM(array);
  Dims sizes(PyArray_DIMS(array), PyArray_DIMS(array) + ndim);
  Dims strides;
  if (!torch_strides(sizes, PyArray_STRIDES(array), itemsize, strides)) {
    // Negative strides (a[::-1]): the one case where the bridge copies. The tensor owns a C-contiguous
    // copy, so writes through it do not reach the original array.
    OwnedRef copy(PyArray_NewCopy(array, NPY_CORDER));
    return array_to_tensor(copy.ptr);  // the tensor takes its own reference to the copy
  }
  // Read-only arrays are viewed too: torch has no read-only flag (documented in _bridge.py).
  return view_as_tensor(PyArray_DATA(array), sizes, strides, st, at::Device(at::kCPU), obj);
}

// Borrowed item of a __cuda_array_interface__ dict; nullptr when absent.
PyObject* cai_item(PyObject* cai, const char* key) { return PyDict_GetItemString(cai, key); }

int64_t as_int64(PyObject* obj) {
  const long long v = PyLong_AsLongLong(obj);
  if (v == -1 && PyErr_Occurred()) throw PyErrorSet{};
  return v;
}

// `owner` is the CUDA array, `cai` its __cuda_array_interface__ dict (version 2 or 3), `device` the CUDA
// device its memory lives on.
at::Tensor cuda_array_to_tensor(PyObject* owner, PyObject* cai, int device) {
  if (!PyDict_Check(cai)) throw PyError(PyExc_TypeError, "megengine torch bridge: cai must be a dict");
  PyObject* mask = cai_item(cai, "mask");
  if (mask != nullptr && mask != Py_None) {
    throw PyError(PyExc_ValueError, "megengine torch bridge: masked CUDA arrays cannot be viewed by torch");
  }
  PyObject* typestr_obj = cai_item(cai, "typestr");
  PyObject* shape_obj = cai_item(cai, "shape");
  PyObject* data_obj = cai_item(cai, "data");
  if (!typestr_obj || !shape_obj || !data_obj || !PyTuple_Check(shape_obj) || !PyTuple_Check(data_obj)) {
    throw PyError(PyExc_ValueError, "megengine torch bridge: malformed __cuda_array_interface__");
  }
  const std::string typestr = str_of(typestr_obj);
  if (typestr.size() < 3) throw PyError(PyExc_ValueError, "megengine torch bridge: bad typestr '" + typestr + "'");
  const int64_t itemsize = std::stoll(typestr.substr(2));
  const at::ScalarType st = scalar_type_of(typestr[1], itemsize, typestr[0], [&] { return "'" + typestr + "'"; });

  const Py_ssize_t ndim = PyTuple_GET_SIZE(shape_obj);
  Dims sizes(ndim);
  for (Py_ssize_t d = 0; d < ndim; ++d) sizes[d] = as_int64(PyTuple_GET_ITEM(shape_obj, d));
  c10::SmallVector<Py_ssize_t, 8> byte_strides(ndim);
  PyObject* strides_obj = cai_item(cai, "strides");
  if (strides_obj != nullptr && strides_obj != Py_None) {
    if (!PyTuple_Check(strides_obj) || PyTuple_GET_SIZE(strides_obj) != ndim) {
      throw PyError(PyExc_ValueError, "megengine torch bridge: malformed strides in __cuda_array_interface__");
    }
    for (Py_ssize_t d = 0; d < ndim; ++d) byte_strides[d] = as_int64(PyTuple_GET_ITEM(strides_obj, d));
  } else {  // None: C-contiguous
    Py_ssize_t step = itemsize;
    for (Py_ssize_t d = ndim - 1; d >= 0; --d) {
      byte_strides[d] = step;
      step *= std::max<int64_t>(sizes[d], 1);
    }
  }
  Dims strides;
  if (!torch_strides(sizes, byte_strides.data(), itemsize, strides)) {
    // The same single copy case as on the CPU. CuPy's copy() is C-ordered and runs on CuPy's current
    // stream, the stream the caller then makes torch wait for.
    OwnedRef copy(PyObject_CallMethod(owner, "copy", nullptr));
    OwnedRef copy_cai(PyObject_GetAttr(copy.ptr, cai_name));
    return cuda_array_to_tensor(copy.ptr, copy_cai.ptr, device);
  }
  if (PyTuple_GET_SIZE(data_obj) < 1) throw PyError(PyExc_ValueError, "megengine torch bridge: malformed data");
  void* data = PyLong_AsVoidPtr(PyTuple_GET_ITEM(data_obj, 0));
  if (data == nullptr && PyErr_Occurred()) throw PyErrorSet{};
  return view_as_tensor(data, sizes, strides, st, at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)),
                        owner);
}

// ---------------------------------------------------------------------------------------------------------
// tensor -> array

void delete_storage(PyObject* capsule) {
  delete static_cast<c10::Storage*>(PyCapsule_GetPointer(capsule, kCapsuleName));
}

// The at::Tensor behind a torch.Tensor. Tensor._cdata is the address of its TensorImpl; this is what
// THPVariable_Unpack returns, without torch's Python headers.
at::Tensor unpack_tensor(PyObject* obj) {
  if (THPVariableClass == nullptr || !PyObject_TypeCheck(obj, reinterpret_cast<PyTypeObject*>(THPVariableClass))) {
    throw PyError(PyExc_TypeError, std::string("megengine torch bridge: from_torch expects a torch.Tensor, got ") +
                                       Py_TYPE(obj)->tp_name);
  }
  void* impl = PyLong_AsVoidPtr(OwnedRef(PyObject_GetAttr(obj, cdata_name)).ptr);
  if (impl == nullptr) {
    if (PyErr_Occurred()) throw PyErrorSet{};
    throw PyError(PyExc_ValueError, "megengine torch bridge: undefined tensor");
  }
  return at::Tensor(c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>::unsafe_reclaim_from_nonowning(
      static_cast<c10::TensorImpl*>(impl)));
}

PyObject* cpu_tensor_to_array(const at::Tensor& t, int typenum);

PyObject* tensor_to_array(PyObject* obj) {
  const at::Tensor t = unpack_tensor(obj);
  if (t.layout() != at::kStrided) {
    throw PyError(PyExc_TypeError, "megengine torch bridge: only strided (dense) tensors can be viewed; call "
                                   ".to_dense() first");
  }
  const int typenum = numpy_typenum_of(t.scalar_type(), obj);
  if (t.device().is_cuda() && cuda_from_torch_handler != nullptr) {
    return PyObject_CallOneArg(cuda_from_torch_handler, obj);
  }
  if (!t.device().is_cpu()) {
    throw PyError(PyExc_ValueError, "megengine torch bridge: only CPU and CUDA tensors can be viewed, got one on " +
                                        t.device().str());
  }
  return cpu_tensor_to_array(t, typenum);
}

// The numpy view of CPU tensor `t` (numpy type `typenum`).
PyObject* cpu_tensor_to_array(const at::Tensor& t, int typenum) {
  if (t.is_neg() || t.is_conj()) {
    throw PyError(PyExc_ValueError, "megengine torch bridge: the tensor is a lazily negated/conjugated view; call "
                                    ".resolve_neg() / .resolve_conj() first");
  }
  if (!t.has_storage()) {
    throw PyError(PyExc_TypeError, "megengine torch bridge: the tensor has no storage (a tensor subclass or a "
                                   "traced/fake tensor?), so there is no memory to view");
  }
  const int64_t itemsize = t.element_size();
  const int64_t ndim = t.dim();
  c10::SmallVector<npy_intp, 8> shape(ndim), byte_strides(ndim);
  for (int64_t d = 0; d < ndim; ++d) {
    shape[d] = t.sizes()[d];
    byte_strides[d] = t.strides()[d] * itemsize;
  }
  // The array's base holds the storage, not the tensor, which would also keep its autograd graph alive.
  // Tensors that require grad are viewed like .detach(). mutable_data_ptr: the array is writable, so a
  // lazily-cloned (copy-on-write) storage must materialise now.
  void* data = t.mutable_data_ptr();
  PyObject* base = PyCapsule_New(new c10::Storage(t.storage()), kCapsuleName, &delete_storage);
  if (base == nullptr) throw PyErrorSet{};  // (leaks one Storage handle on this out-of-memory path)
  PyObject* array = PyArray_NewFromDescr(&PyArray_Type, PyArray_DescrFromType(typenum), static_cast<int>(ndim),
                                         shape.data(), byte_strides.data(), data, NPY_ARRAY_WRITEABLE, nullptr);
  if (array == nullptr) {
    Py_DECREF(base);
    throw PyErrorSet{};
  }
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(array), base) < 0) {  // steals `base`
    Py_DECREF(array);
    throw PyErrorSet{};
  }
  return array;
}

// ---------------------------------------------------------------------------------------------------------
// gradients torch -> megengine (PyTorchModule's backward)

// Whether `t` is the only tensor on a storage it spans whole: then nothing else (torch's graph, a
// parameter, another gradient) can see its memory and megengine may keep it as a .grad without a copy.
// The storage's use count is the test torch's AccumulateGrad applies before it steals a gradient: one
// for `t`, two when `t` is a view (its base holds the storage too: mm's weight gradient is a transposed
// product made contiguous). Checked before any array views the storage (a view adds one).
bool owns_its_storage(const at::Tensor& t) {
  const c10::Storage& storage = t.storage();
  return t.is_contiguous() && t.storage_offset() == 0 &&
         storage.nbytes() == static_cast<size_t>(t.numel()) * t.element_size() &&
         storage.use_count() == (t.is_view() ? 2 : 1);
}

// A new C-contiguous numpy array holding a copy of CPU tensor `t`'s values.
PyObject* copy_to_array(const at::Tensor& t, PyObject* obj) {
  const int typenum = numpy_typenum_of(t.scalar_type(), obj);
  const int64_t ndim = t.dim();
  c10::SmallVector<npy_intp, 8> shape(ndim);
  for (int64_t d = 0; d < ndim; ++d) shape[d] = t.sizes()[d];
  PyObject* array = PyArray_SimpleNew(static_cast<int>(ndim), shape.data(), typenum);
  if (array == nullptr) throw PyErrorSet{};
  if (t.numel() == 0) {
    // nothing to copy (and an empty tensor's data pointer may be null)
  } else if (t.is_contiguous() && !t.is_neg() && !t.is_conj()) {
    std::memcpy(PyArray_DATA(reinterpret_cast<PyArrayObject*>(array)), t.const_data_ptr(),
                static_cast<size_t>(t.numel()) * t.element_size());
  } else {  // rare (torch's gradients are contiguous): let torch copy into a view of the new array
    try {
      at::from_blob(PyArray_DATA(reinterpret_cast<PyArrayObject*>(array)), t.sizes(), t.options()).copy_(t);
    } catch (...) {
      Py_DECREF(array);
      throw;
    }
  }
  return array;
}

// hand_over(grads, slots, result, taken, min_numel, fresh): what PyTorchModule's backward does with
// the gradients torch.autograd returned, for all of them in one call (a Python loop paid ~4 us per
// gradient in view, copy and storage checks). For each CPU tensor grads[k] (None is skipped), result[
// slots[k]] becomes an engine array megengine may keep as a .grad:
// * fewer than min_numel elements: a copy (cheaper than asking who else sees the memory);
// * its memory is one of the tensors in `taken` (the output gradients and inputs handed to torch,
//   which torch may return unchanged, e.g. through an add) or an earlier gradient's: a view of a clone,
//   declared fresh;
// * otherwise a view, declared fresh when the tensor owns its storage alone.
// Declared fresh: fresh[id(array)] = a weak reference to the array, the entry core/dispatch.py's
// declare_fresh_gradient makes for such a view (the array is its own foreign key: its base is the storage
// capsule, no array); `fresh` is that registry (dispatch.fresh_registry()). Written here, not by calling
// declare_fresh_gradient: a Python call per gradient cost ~3 us of a batch-8 LeNet step's backward.
// A sparse gradient is made dense first.
// Never are two results views of one memory: megengine must not give two tensors one gradient array,
// or an in-place edit (clip_grad_norm) would apply twice.
PyObject* hand_over(PyObject* grads, PyObject* slots, PyObject* result, PyObject* taken, Py_ssize_t min_numel,
                    PyObject* fresh_registry) {
  if (!PySequence_Check(grads) || !PyList_Check(slots) || !PyList_Check(result) || !PyTuple_Check(taken) ||
      !PyDict_Check(fresh_registry)) {
    throw PyError(PyExc_TypeError,
                  "hand_over(grads, slots: list, result: list, taken: tuple, min_numel, fresh: dict)");
  }
  OwnedRef seq(PySequence_Fast(grads, "hand_over: grads must be a sequence"));
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr);
  if (PyList_GET_SIZE(slots) != n) throw PyError(PyExc_ValueError, "hand_over: one slot per gradient expected");
  c10::SmallVector<const void*, 16> seen;  // addresses no result may view
  bool seen_filled = false;
  for (Py_ssize_t k = 0; k < n; ++k) {
    PyObject* obj = PySequence_Fast_GET_ITEM(seq.ptr, k);
    if (obj == Py_None) continue;
    const Py_ssize_t slot = PyLong_AsSsize_t(PyList_GET_ITEM(slots, k));
    if (slot == -1 && PyErr_Occurred()) throw PyErrorSet{};
    if (slot < 0 || slot >= PyList_GET_SIZE(result)) throw PyError(PyExc_IndexError, "hand_over: slot out of range");
    at::Tensor t = unpack_tensor(obj);
    if (!t.device().is_cpu()) {
      throw PyError(PyExc_ValueError, "hand_over: CPU gradients only (CUDA ones take the Python path)");
    }
    if (t.layout() != at::kStrided) {
      // a sparse gradient (nn.Embedding(sparse=True)): megengine's arrays are dense, so it gets the
      // dense equal (duplicate rows summed), a new tensor that nothing else sees
      OwnedRef dense(PyObject_CallMethod(obj, "to_dense", nullptr));
      t = unpack_tensor(dense.ptr);
    }
    PyObject* array;
    if (t.numel() < min_numel) {
      array = copy_to_array(t, obj);
    } else {
      if (!seen_filled) {
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(taken); ++j) {
          seen.push_back(unpack_tensor(PyTuple_GET_ITEM(taken, j)).data_ptr());
        }
        seen_filled = true;
      }
      bool fresh;
      if (std::find(seen.begin(), seen.end(), t.const_data_ptr()) != seen.end()) {
        t = t.clone(at::MemoryFormat::Contiguous);  // torch handed out memory megengine has seen
        fresh = true;
      } else {
        fresh = owns_its_storage(t);
      }
      seen.push_back(t.const_data_ptr());
      array = cpu_tensor_to_array(t, numpy_typenum_of(t.scalar_type(), obj));
      if (fresh) {
        PyObject* id = PyLong_FromVoidPtr(array);  // (Python's id())
        PyObject* ref = id == nullptr ? nullptr : PyWeakref_NewRef(array, nullptr);
        const bool failed = ref == nullptr || PyDict_SetItem(fresh_registry, id, ref) < 0;
        Py_XDECREF(ref);
        Py_XDECREF(id);
        if (failed) {
          Py_DECREF(array);
          throw PyErrorSet{};
        }
      }
    }
    PyList_SetItem(result, slot, array);  // steals `array`, drops what was there
  }
  Py_RETURN_NONE;
}

// ---------------------------------------------------------------------------------------------------------
// optimizer.SGD's update on the host

// p -= lr * g element by element, rounded as numpy's `p -= lr * g` rounds it: lr in T (numpy takes a
// Python float as the array's dtype), the product rounded, then the difference. Two operations, never one
// fused multiply-add: this file is compiled with -ffp-contract=off (torch_bridge.py's _CFLAGS).
template <class T>
void sgd_loop(T* p, const T* g, npy_intp n, T lr) {
  for (npy_intp i = 0; i < n; ++i) {
    const T step = lr * g[i];
    p[i] = p[i] - step;
  }
}

// sgd_step(params, grads, lr, max_numel): optimizer.SGD's update without momentum or weight decay,
// params[k] -= lr * grads[k], for all of a step's parameters in one call (two numpy ufunc calls a
// parameter cost ~5 us right after torch's convolutions in a batch-8 LeNet step, cold caches). It takes a
// pair of numpy arrays of one dtype (float32 or float64, native byte order) and one shape, both
// C-contiguous and aligned, the parameter writeable, with fewer than max_numel elements, and whose
// memories are one or do not overlap; it returns the list of the indices of the pairs it left alone, for
// the caller's array code (numpy's ufuncs handle every other case, and give these the same values).
PyObject* sgd_step(PyObject* params, PyObject* grads, double lr, Py_ssize_t max_numel) {
  if (!PyList_Check(params) || !PyList_Check(grads) || PyList_GET_SIZE(params) != PyList_GET_SIZE(grads)) {
    throw PyError(PyExc_TypeError, "sgd_step(params: list, grads: list of the same length, lr, max_numel)");
  }
  OwnedRef left(PyList_New(0));
  for (Py_ssize_t k = 0; k < PyList_GET_SIZE(params); ++k) {
    PyObject* p_obj = PyList_GET_ITEM(params, k);
    PyObject* g_obj = PyList_GET_ITEM(grads, k);
    bool taken = false;
    if (PyArray_Check(p_obj) && PyArray_Check(g_obj)) {
      auto* p = reinterpret_cast<PyArrayObject*>(p_obj);
      auto* g = reinterpret_cast<PyArrayObject*>(g_obj);
      const int type = PyArray_TYPE(p);
      const npy_intp n = PyArray_SIZE(p);
      char* p_data = PyArray_BYTES(p);
      const char* g_data = PyArray_BYTES(g);
      const npy_intp nbytes = n * PyArray_ITEMSIZE(p);
      taken = (type == NPY_FLOAT32 || type == NPY_FLOAT64) && PyArray_TYPE(g) == type &&
              PyArray_ISNBO(PyArray_DESCR(p)->byteorder) && PyArray_ISNBO(PyArray_DESCR(g)->byteorder) &&
              PyArray_NDIM(p) == PyArray_NDIM(g) &&
              PyArray_CompareLists(PyArray_DIMS(p), PyArray_DIMS(g), PyArray_NDIM(p)) &&
              PyArray_IS_C_CONTIGUOUS(p) && PyArray_IS_C_CONTIGUOUS(g) && PyArray_ISALIGNED(p) &&
              PyArray_ISALIGNED(g) && PyArray_ISWRITEABLE(p) && n < max_numel &&
              (p_data == g_data || p_data + nbytes <= g_data || g_data + nbytes <= p_data);
      if (taken && type == NPY_FLOAT32) {
        sgd_loop(reinterpret_cast<float*>(p_data), reinterpret_cast<const float*>(g_data), n,
                 static_cast<float>(lr));
      } else if (taken) {
        sgd_loop(reinterpret_cast<double*>(p_data), reinterpret_cast<const double*>(g_data), n, lr);
      }
    }
    if (!taken) {
      OwnedRef index(PyLong_FromSsize_t(k));
      if (PyList_Append(left.ptr, index.ptr) < 0) throw PyErrorSet{};
    }
  }
  Py_INCREF(left.ptr);
  return left.ptr;
}

// ---------------------------------------------------------------------------------------------------------
// F.nn.cross_entropy's training case on the host: (N, C) logits, integer labels, the mean

// The arrays ce_rows takes: a C-contiguous, aligned, native (N, C) float32 / float64 `pred` with N, C >= 1,
// and an aligned native 1-d int32 / int64 `label` of N entries (any stride); its dtype number or -1.
int ce_rows_types(PyObject* pred_obj, PyObject* label_obj) {
  if (!PyArray_Check(pred_obj) || !PyArray_Check(label_obj)) return -1;
  auto* pred = reinterpret_cast<PyArrayObject*>(pred_obj);
  auto* label = reinterpret_cast<PyArrayObject*>(label_obj);
  const int type = PyArray_TYPE(pred), ltype = PyArray_TYPE(label);
  const bool ok = (type == NPY_FLOAT32 || type == NPY_FLOAT64) && PyArray_NDIM(pred) == 2 &&
                  PyArray_DIM(pred, 0) > 0 && PyArray_DIM(pred, 1) > 0 && PyArray_IS_C_CONTIGUOUS(pred) &&
                  PyArray_ISALIGNED(pred) && PyArray_ISNBO(PyArray_DESCR(pred)->byteorder) &&
                  (ltype == NPY_INT32 || ltype == NPY_INT64) && PyArray_NDIM(label) == 1 &&
                  PyArray_DIM(label, 0) == PyArray_DIM(pred, 0) && PyArray_ISALIGNED(label) &&
                  PyArray_ISNBO(PyArray_DESCR(label)->byteorder);
  return ok ? type : -1;
}

template <class L>
int64_t label_at(PyArrayObject* label, npy_intp i) {
  return *reinterpret_cast<const L*>(PyArray_BYTES(label) + i * PyArray_STRIDE(label, 0));
}

int64_t ce_label(PyArrayObject* label, npy_intp i) {
  return PyArray_TYPE(label) == NPY_INT32 ? label_at<int32_t>(label, i) : label_at<int64_t>(label, i);
}

// Each row shifted by its maximum (NaN when it holds one, as numpy's maximum), e = exp(shifted) and its
// sum s, and the mean over rows of log(s) - shifted[label]; false (nothing written) when a label is
// outside [0, C).
template <class T>
bool ce_rows_loop(const T* x, PyArrayObject* label, npy_intp n, npy_intp c, T* e, T* s, T* loss) {
  for (npy_intp i = 0; i < n; ++i) {
    const int64_t k = ce_label(label, i);
    if (k < 0 || k >= c) return false;
  }
  T total = 0;
  for (npy_intp i = 0; i < n; ++i) {
    const T* row = x + i * c;
    T* out = e + i * c;
    T m = row[0];
    for (npy_intp j = 1; j < c; ++j) {
      if (row[j] > m || std::isnan(row[j])) m = std::isnan(m) ? m : row[j];
    }
    T sum = 0;
    for (npy_intp j = 0; j < c; ++j) {
      out[j] = std::exp(row[j] - m);
      sum += out[j];
    }
    s[i] = sum;
    const T at_label = row[ce_label(label, i)] - m;
    total += std::log(sum) - at_label;
  }
  *loss = total / static_cast<T>(n);
  return true;
}

// ce_rows(pred, label) -> (e, s, loss) or None: the forward above, in new arrays (e (N, C), s (N,),
// loss 0-d, pred's dtype); None leaves the case to the caller's array code (other arrays, or a label
// out of range, which the caller reports).
PyObject* ce_rows(PyObject* pred_obj, PyObject* label_obj) {
  const int type = ce_rows_types(pred_obj, label_obj);
  if (type < 0) Py_RETURN_NONE;
  auto* pred = reinterpret_cast<PyArrayObject*>(pred_obj);
  auto* label = reinterpret_cast<PyArrayObject*>(label_obj);
  const npy_intp n = PyArray_DIM(pred, 0), c = PyArray_DIM(pred, 1);
  OwnedRef e(PyArray_SimpleNew(2, PyArray_DIMS(pred), type));
  OwnedRef s(PyArray_SimpleNew(1, PyArray_DIMS(pred), type));
  OwnedRef loss(PyArray_SimpleNew(0, nullptr, type));
  auto data = [](const OwnedRef& a) { return PyArray_BYTES(reinterpret_cast<PyArrayObject*>(a.ptr)); };
  const bool done =
      type == NPY_FLOAT32
          ? ce_rows_loop(reinterpret_cast<const float*>(PyArray_BYTES(pred)), label, n, c,
                         reinterpret_cast<float*>(data(e)), reinterpret_cast<float*>(data(s)),
                         reinterpret_cast<float*>(data(loss)))
          : ce_rows_loop(reinterpret_cast<const double*>(PyArray_BYTES(pred)), label, n, c,
                         reinterpret_cast<double*>(data(e)), reinterpret_cast<double*>(data(s)),
                         reinterpret_cast<double*>(data(loss)));
  if (!done) Py_RETURN_NONE;
  return PyTuple_Pack(3, e.ptr, s.ptr, loss.ptr);
}

// ce_rows_grad(e, s, label, g) -> grad or None: the gradient of that mean for a 0-d gradient g of e's
// dtype, (e / s - onehot(label)) * (g / N), rounded as numpy's array code rounds it (each operation in
// the dtype: the quotient, the difference at the label, the product).
template <class T>
void ce_rows_grad_loop(const T* e, const T* s, PyArrayObject* label, npy_intp n, npy_intp c, T g, T* grad) {
  const T scale = g / static_cast<T>(n);
  for (npy_intp i = 0; i < n; ++i) {
    const T* row = e + i * c;
    T* out = grad + i * c;
    for (npy_intp j = 0; j < c; ++j) out[j] = row[j] / s[i];
    out[ce_label(label, i)] -= T(1);
    for (npy_intp j = 0; j < c; ++j) out[j] = out[j] * scale;
  }
}

PyObject* ce_rows_grad(PyObject* e_obj, PyObject* s_obj, PyObject* label_obj, PyObject* g_obj) {
  const int type = ce_rows_types(e_obj, label_obj);
  if (type < 0 || !PyArray_Check(s_obj) || !PyArray_Check(g_obj)) Py_RETURN_NONE;
  auto* e = reinterpret_cast<PyArrayObject*>(e_obj);
  auto* s = reinterpret_cast<PyArrayObject*>(s_obj);
  auto* g = reinterpret_cast<PyArrayObject*>(g_obj);
  auto* label = reinterpret_cast<PyArrayObject*>(label_obj);
  const npy_intp n = PyArray_DIM(e, 0), c = PyArray_DIM(e, 1);
  const auto native = [](PyArrayObject* a) { return PyArray_ISNBO(PyArray_DESCR(a)->byteorder); };
  if (PyArray_TYPE(s) != type || PyArray_NDIM(s) != 1 || PyArray_DIM(s, 0) != n || !PyArray_IS_C_CONTIGUOUS(s) ||
      !PyArray_ISALIGNED(s) || !native(s) || PyArray_TYPE(g) != type || PyArray_NDIM(g) != 0 ||
      !PyArray_ISALIGNED(g) || !native(g)) {
    Py_RETURN_NONE;
  }
  OwnedRef grad(PyArray_SimpleNew(2, PyArray_DIMS(e), type));
  char* out = PyArray_BYTES(reinterpret_cast<PyArrayObject*>(grad.ptr));
  if (type == NPY_FLOAT32) {
    ce_rows_grad_loop(reinterpret_cast<const float*>(PyArray_BYTES(e)),
                      reinterpret_cast<const float*>(PyArray_BYTES(s)), label, n, c,
                      *reinterpret_cast<const float*>(PyArray_BYTES(g)), reinterpret_cast<float*>(out));
  } else {
    ce_rows_grad_loop(reinterpret_cast<const double*>(PyArray_BYTES(e)),
                      reinterpret_cast<const double*>(PyArray_BYTES(s)), label, n, c,
                      *reinterpret_cast<const double*>(PyArray_BYTES(g)), reinterpret_cast<double*>(out));
  }
  Py_INCREF(grad.ptr);
  return grad.ptr;
}

// ---------------------------------------------------------------------------------------------------------
// Python entry points

// Runs `body`, turning C++ exceptions into the matching Python exception.
template <class F>
PyObject* guarded(F&& body) {
  try {
    return body();
  } catch (const PyErrorSet&) {
  } catch (const PyError& e) {
    PyErr_SetString(e.type, e.what());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

PyObject* to_torch_py(PyObject* /*module*/, PyObject* array) {
  return guarded([&] {
    if (PyArray_Check(array)) return THPVariable_Wrap(array_to_tensor(array));
    if (cuda_to_torch_handler != nullptr && PyObject_HasAttr(array, cai_name)) {
      return PyObject_CallOneArg(cuda_to_torch_handler, array);
    }
    if (PyArray_IsScalar(array, Generic)) {  // numpy arithmetic on 0-d arrays returns scalars (the
      OwnedRef zero_d(PyArray_FromScalar(array, nullptr));  // gradient of a 0-d output): a 0-d copy
      return THPVariable_Wrap(array_to_tensor(zero_d.ptr));
    }
    throw PyError(PyExc_TypeError, std::string("megengine torch bridge: to_torch expects a numpy.ndarray or a CUDA "
                                               "array with __cuda_array_interface__ (e.g. cupy.ndarray), got ") +
                                       Py_TYPE(array)->tp_name);
  });
}

PyObject* from_torch_py(PyObject* /*module*/, PyObject* tensor) {
  return guarded([&] { return tensor_to_array(tensor); });
}

PyObject* cuda_to_torch_py(PyObject* /*module*/, PyObject* args) {
  PyObject *owner, *cai;
  int device;
  if (!PyArg_ParseTuple(args, "OOi:cuda_to_torch", &owner, &cai, &device)) return nullptr;
  return guarded([&] { return THPVariable_Wrap(cuda_array_to_tensor(owner, cai, device)); });
}

PyObject* set_cuda_handlers_py(PyObject* /*module*/, PyObject* args) {
  PyObject *to_torch, *from_torch;
  if (!PyArg_ParseTuple(args, "OO:set_cuda_handlers", &to_torch, &from_torch)) return nullptr;
  Py_INCREF(to_torch);
  Py_INCREF(from_torch);
  Py_XSETREF(cuda_to_torch_handler, to_torch);
  Py_XSETREF(cuda_from_torch_handler, from_torch);
  Py_RETURN_NONE;
}

PyObject* hand_over_py(PyObject* /*module*/, PyObject* args) {
  PyObject *grads, *slots, *result, *taken, *fresh;
  Py_ssize_t min_numel;
  if (!PyArg_ParseTuple(args, "OOOOnO:hand_over", &grads, &slots, &result, &taken, &min_numel, &fresh)) {
    return nullptr;
  }
  return guarded([&] { return hand_over(grads, slots, result, taken, min_numel, fresh); });
}

PyObject* sgd_step_py(PyObject* /*module*/, PyObject* args) {
  PyObject *params, *grads;
  double lr;
  Py_ssize_t max_numel;
  if (!PyArg_ParseTuple(args, "OOdn:sgd_step", &params, &grads, &lr, &max_numel)) return nullptr;
  return guarded([&] { return sgd_step(params, grads, lr, max_numel); });
}

PyObject* ce_rows_py(PyObject* /*module*/, PyObject* args) {
  PyObject *pred, *label;
  if (!PyArg_ParseTuple(args, "OO:ce_rows", &pred, &label)) return nullptr;
  return guarded([&] { return ce_rows(pred, label); });
}

PyObject* ce_rows_grad_py(PyObject* /*module*/, PyObject* args) {
  PyObject *e, *s, *label, *g;
  if (!PyArg_ParseTuple(args, "OOOO:ce_rows_grad", &e, &s, &label, &g)) return nullptr;
  return guarded([&] { return ce_rows_grad(e, s, label, g); });
}

PyMethodDef methods[] = {
    {"to_torch", to_torch_py, METH_O, "to_torch(ndarray) -> torch.Tensor viewing the array's memory"},
    {"from_torch", from_torch_py, METH_O, "from_torch(tensor) -> numpy.ndarray viewing a CPU tensor's memory"},
    {"cuda_to_torch", cuda_to_torch_py, METH_VARARGS,
     "cuda_to_torch(owner, cai, device) -> torch.Tensor viewing a CUDA array (no stream ordering)"},
    {"set_cuda_handlers", set_cuda_handlers_py, METH_VARARGS,
     "set_cuda_handlers(to_torch, from_torch): Python callables for CUDA arrays / CUDA tensors"},
    {"hand_over", hand_over_py, METH_VARARGS,
     "hand_over(grads, slots, result, taken, min_numel, fresh): torch's CPU gradients as arrays megengine "
     "may keep, written into result[slot]"},
    {"sgd_step", sgd_step_py, METH_VARARGS,
     "sgd_step(params, grads, lr, max_numel) -> list: params[k] -= lr * grads[k] in numpy's rounding, the "
     "indices of the pairs left to the caller"},
    {"ce_rows", ce_rows_py, METH_VARARGS,
     "ce_rows(pred, label) -> (e, s, loss) or None: cross entropy's (N, C) mean forward on the host"},
    {"ce_rows_grad", ce_rows_grad_py, METH_VARARGS,
     "ce_rows_grad(e, s, label, g) -> grad or None: its gradient, in numpy's rounding"},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, MGE_STRINGIZE(TORCH_EXTENSION_NAME),
    "megengine: zero-copy views between numpy/CuPy arrays and torch tensors", -1, methods,
    nullptr, nullptr, nullptr, nullptr,
};

}  // namespace

// PyInit_<TORCH_EXTENSION_NAME>, the name torch's loader imports
#define MGE_PYINIT_IMPL(name) PyInit_##name
#define MGE_PYINIT(name) MGE_PYINIT_IMPL(name)

PyMODINIT_FUNC MGE_PYINIT(TORCH_EXTENSION_NAME)(void) {
  import_array();  // numpy's C API table; returns nullptr with ImportError set on failure
  cdata_name = PyUnicode_InternFromString("_cdata");
  cai_name = PyUnicode_InternFromString("__cuda_array_interface__");
  if (cdata_name == nullptr || cai_name == nullptr) return nullptr;
  return PyModule_Create(&module_def);
}
