"""Packaging: the C++/CUDA sources in csrc/ and bindings/ ship inside the wheel as
``d4k_kernels._csrc`` and ``d4k_kernels._bindings`` so that the extensions can be built at
first use (torch.utils.cpp_extension, ninja) on the user's machine."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["d4k_kernels", "d4k_kernels.*"])
    + ["d4k_kernels._csrc", "d4k_kernels._bindings"],
    package_dir={"d4k_kernels._csrc": "csrc", "d4k_kernels._bindings": "bindings"},
    package_data={
        "d4k_kernels._csrc": ["*.cpp", "*.h", "*.cu", "*.cuh"],
        "d4k_kernels._bindings": ["*.cpp", "*.h"],
    },
    include_package_data=True,
)
