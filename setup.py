"""retrain: a folder of labeled photos in, a deployable image classifier out."""

import re

from setuptools import find_packages, setup

with open("retrain/__init__.py", encoding="utf-8") as f:
  VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

with open("README.md", encoding="utf-8") as f:
  LONG_DESCRIPTION = f.read()

setup(
    name="retrain",
    version=VERSION,
    description=("Transfer learning from a folder of labeled photos to a "
                 "deployable image classifier, with a bottleneck cache."),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["retrain", "retrain.*", "cache"]),
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.16,<3",
        "tensorflow-hub>=0.16",
        "numpy",
        "absl-py",
    ],
    extras_require={
        "plots": ["matplotlib"],
        "litert": ["ai-edge-litert", "pillow"],
        "beam": ["apache-beam>=2.77"],
        "gcp": ["apache-beam[gcp]>=2.77"],
        "dask": ["apache-beam[dask]>=2.77"],
        "onnx": ["tf2onnx>=1.17", "onnx", "onnxruntime"],
        "test": ["pytest", "pytest-xdist", "pillow", "matplotlib", "ai-edge-litert",
                 "scikit-learn", "tf2onnx>=1.17", "onnx", "onnxruntime",
                 "apache-beam[dask]>=2.77", "mediapipe>=0.10.30"],
    },
    entry_points={
        "console_scripts": [
            "retrain=retrain.__main__:run",
            "label_image=retrain.label_image:run",
        ],
    },
    license="Apache-2.0",
)
