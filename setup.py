# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""losa_jax: LoSA (low-rank side adaptation) of frozen ViTs in JAX/Flax."""
import setuptools

# Ranges that admit both locks CI tests: requirements-lock.txt (Python 3.11,
# jax 0.10.2) and requirements-lock-py312.txt (Python 3.12, the newest
# releases: jax 0.12.1, what Colab installs): lower bounds, upper bounds only
# where an API we use is known to move.
INSTALL_REQUIRES = [
    "jax>=0.8.0",
    "flax>=0.11.0",
    "optax>=0.2.6",
    "orbax-checkpoint>=0.11.0",
    "ml-collections>=1.0.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    "scipy>=1.11",
    "ml-dtypes>=0.4",
    "tensorflow-cpu>=2.16; platform_machine == 'x86_64'",
    "tensorflow>=2.16; platform_machine != 'x86_64'",
    "tensorflow-datasets>=4.9.6",
    # ArrayRecord splits are read by index through tfds.data_source.
    "array_record>=0.5; platform_system == 'Linux'",
    # tfds imports it on its download path but does not declare it.
    "importlib_resources",
    # tf.summary (the trainer's TensorBoard events) lives in this package,
    # which tensorflow-cpu does not pull in.
    "tensorboard>=2.16",
    "mlxtend>=0.23",
    "scikit-learn>=1.3",
    "pillow>=10",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3", "import-linter>=2.1"],
    # timm is the independent numerical reference for checkpoint parity.
    "timm": ["torch>=2.4", "torchvision", "timm>=1.0"],
    "notebooks": ["nbclient>=0.10", "nbformat>=5.10", "ipykernel",
                  "matplotlib>=3.8"],
    "bench": ["matplotlib>=3.8"],
}

setuptools.setup(
    name="losa_jax",
    version="0.1.0",
    description="LoSA: time-, memory- and parameter-efficient adaptation of "
                "frozen Vision Transformers with a low-rank side network.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # `configs` ships beside the package so that config files (which import
    # `configs.common`) load from any working directory.
    packages=setuptools.find_packages(
        include=["losa_jax", "losa_jax.*", "configs"]),
    package_data={"losa_jax": ["assets/*.npz", "assets/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": [
        "losa-train=losa_jax.train:run",
        "losa-predict=losa_jax.predict:run",
    ]},
)
