// Python bindings of the CPU GLCM kernels (csrc/glcm.cpp), loaded by d4k_kernels._build.
#include <torch/extension.h>

#include "glcm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "d4k-kernels: per-patch GLCM counts and exact GLCM Score on the CPU";
  m.def("glcm_counts", &d4k::glcm_counts, "per-patch co-occurrence counts (N*P, U, L, L) int32",
        pybind11::arg("g"), pybind11::arg("patch"), pybind11::arg("offsets"), pybind11::arg("levels"),
        pybind11::arg("qdiv"));
  m.def("glcm_scores", &d4k::glcm_scores, "per-patch distinct-value GLCM entropy (N*P,) float64",
        pybind11::arg("g"), pybind11::arg("patch"), pybind11::arg("offsets"), pybind11::arg("mult"),
        pybind11::arg("keytab"), pybind11::arg("flog"), pybind11::arg("levels"), pybind11::arg("qdiv"),
        pybind11::arg("nkeys"));
}
